# iot-sim container image.
#
#   podman build -t localhost/iot-sim .          (or docker build; the final stage is `runtime`)
#   podman run --rm -p 50051:50051 -p 9090:9090 -e IOT_SIM_ADMIN_TOKEN=change-me \
#       -v ./fleet:/config:ro -v ./out:/data localhost/iot-sim \
#       serve --grpc 0.0.0.0:50051 --admin 0.0.0.0:9090 --config /config/fleet.toml
#
# Stages: `builder` (pinned Rust toolchain, release build), `runtime-base` (debian
# bookworm-slim, non-root user, ports, health check), `runtime` (the default: base + the
# builder's binary) and `runtime-prebuilt` (base + a binary built elsewhere, given as the
# only file of the build context: tests/container.rs uses it on machines that cannot pull the
# Rust image: `podman build --target runtime-prebuilt -f Dockerfile DIR_WITH_iot-sim`).

# ---- build ------------------------------------------------------------------------------
# Pinned to the toolchain the project is tested with (rustc 1.95.0; MSRV in Cargo.toml).
FROM docker.io/library/rust:1.95.0-slim-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin iot-sim \
    && strip target/release/iot-sim \
    && cp target/release/iot-sim /iot-sim

# ---- runtime base -----------------------------------------------------------------------
# Slim Debian rather than distroless: the binary needs only glibc and libgcc_s, which both
# have; bookworm-slim is the base the test can rebuild offline (debootstrap). No shell is
# needed at run time: the health check is the binary itself.
FROM docker.io/library/debian:bookworm-slim AS runtime-base
# A fixed, unprivileged uid/gid (Kubernetes runAsNonRoot checks a numeric USER).
RUN groupadd --system --gid 10001 iot-sim \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin iot-sim \
    && mkdir -p /data /config \
    && chown 10001:10001 /data
# /config: fleet, profile and scenario files (mount read-only).
# /data: the working directory; the report (iot-sim-report/ by default, or [run] report_dir)
# and file-sink output go here (mount a writable volume to keep them).
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
# gRPC control (simulator.v1) and admin HTTP (/readyz, /metrics, /api/v1).
EXPOSE 50051 9090
# Inside a container, 127.0.0.1 is the container's own loopback: nothing outside (the host's
# port mapping, other containers, Kubernetes probes and Prometheus) could reach it. So the
# default command binds 0.0.0.0, and the container's network (published ports, a Service,
# NetworkPolicy) decides who reaches it. A non-loopback admin address requires
# IOT_SIM_ADMIN_TOKEN (the bearer token of the mutating admin routes): pass it at run time
# (-e, a Compose env file, a Kubernetes Secret); the image holds no secret.
ENTRYPOINT ["/usr/local/bin/iot-sim"]
CMD ["serve", "--grpc", "0.0.0.0:50051", "--admin", "0.0.0.0:9090"]
# SIGTERM (docker/podman stop, Kubernetes) stops the shards, flushes the sinks and writes the
# report, well within the default 10 s grace period.
STOPSIGNAL SIGTERM
# Ready = every shard runs and every network sink is connected (/readyz). No shell, no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/iot-sim", "probe", "--admin", "127.0.0.1:9090", "--timeout", "3s"]

# ---- runtime from a prebuilt binary (the test's stage) -----------------------------------
FROM runtime-base AS runtime-prebuilt
COPY iot-sim /usr/local/bin/iot-sim

# ---- runtime (the default, last stage) ---------------------------------------------------
FROM runtime-base AS runtime
COPY --from=builder /iot-sim /usr/local/bin/iot-sim
