#!/usr/bin/env bash
# Installs (Debian packages) and starts what the tests need, on a machine that has only Rust
# and apt; does nothing for what is already there and running. Called by scripts/test.sh.
#   Mosquitto   127.0.0.1:1883  tests/it/sink_mqtt.rs, tests/it/grpc_compat.rs (restart tests start their own)
#   RabbitMQ    127.0.0.1:5672  tests/it/sink_amqp.rs (guest/guest)
#     its bundled plugins rabbitmq_mqtt, rabbitmq_web_mqtt, rabbitmq_auth_backend_oauth2 and
#     rabbitmq_auth_backend_http: tests/it/mqtt_tokens.rs starts a private node with them on free
#     ports (common/rabbit.rs); the shared node is not reconfigured
#   openssl                     test certificates and signing keys (common/tls.rs, common/rabbit.rs)
#   coap-server (libcoap)       tests/it/sink_coap.rs, tests/it/coap_formats.rs start their own on a free port
#   python3 + venv              tests/it/grpc_python.rs builds a grpcio client under target/
#   python3-jsonschema          src/config/schema/tests.rs checks the shipped files against `iot-sim schema`
#   python3-cbor2               tests/it/formats.rs decodes CBOR and SenML-CBOR payloads independently
#   python3-protobuf, protoc    tests/it/formats.rs decodes protobuf payloads with code protoc generates
#     (protobuf-compiler; libprotobuf-dev has google/protobuf/*.proto)
#   pysparkplug (PyPI), python3-paho-mqtt
#                               tests/it/sparkplug.rs: an independent Sparkplug B host
#                               tests/it/mqtt5_props.rs: a paho-mqtt v5 subscriber reads MQTT 5 properties
#   prometheus, promtool        tests/it/prometheus.rs starts its own server on a free port
#   chromium, chromedriver      tests/it/browser.rs drives headless Chromium over WebDriver
#   podman, runc, debootstrap   tests/it/container.rs builds and runs the image (base made locally)
#   docker-compose              tests/it/deploy_files.rs validates deploy/compose.yaml offline
set -euo pipefail

updated=0
apt_install() {
    if [ "$updated" = 0 ]; then
        apt-get update >/dev/null 2>&1 || true
        updated=1
    fi
    echo "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # $1 = port, $2 = name, $3 = seconds
    for _ in $(seq 1 $(($3 * 2))); do
        port_open "$1" && return 0
        sleep 0.5
    done
    echo "$2 did not come up on 127.0.0.1:$1" >&2
    return 1
}

command -v mosquitto >/dev/null || apt_install mosquitto mosquitto-clients
# Test CAs and `certs issue` output are made and checked with the openssl CLI.
command -v openssl >/dev/null || apt_install openssl
if ! port_open 1883; then
    echo "starting mosquitto"
    mosquitto -d -c /etc/mosquitto/mosquitto.conf 2>/dev/null || mosquitto -d -p 1883
    wait_port 1883 mosquitto 30
fi

command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
command -v openssl >/dev/null || apt_install openssl
if ! port_open 5672; then
    echo "starting rabbitmq"
    rabbitmq-server -detached
    wait_port 5672 rabbitmq 120
fi

# Debian ships coap-server-notls/-openssl/-gnutls in libcoap3-bin.
if ! command -v coap-server >/dev/null && ! command -v coap-server-notls >/dev/null; then
    apt_install libcoap3-bin
fi

command -v python3 >/dev/null || apt_install python3
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
# The tests use /usr/bin/python3 when it has the module (Debian's packages install there), else
# the first python3 on the PATH.
has_py_module() { /usr/bin/python3 -c "import $1" 2>/dev/null || python3 -c "import $1" 2>/dev/null; }
has_py_module jsonschema || apt_install python3-jsonschema
has_py_module cbor2 || apt_install python3-cbor2
has_py_module google.protobuf || apt_install python3-protobuf
command -v protoc >/dev/null || apt_install protobuf-compiler
[ -f /usr/include/google/protobuf/timestamp.proto ] || apt_install libprotobuf-dev
has_py_module paho.mqtt.client || apt_install python3-paho-mqtt
# pysparkplug is not packaged by Debian: pip for /usr/bin/python3 (brings its protobuf runtime).
if ! has_py_module pysparkplug; then
    /usr/bin/python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
    echo "installing pysparkplug (pip)"
    /usr/bin/python3 -m pip install --quiet --break-system-packages pysparkplug
fi

# Prometheus and promtool: tests/it/prometheus.rs starts its own server on a free port.
command -v prometheus >/dev/null && command -v promtool >/dev/null || apt_install prometheus

# Container tooling for tests/it/container.rs (podman + runc build and run the image; debootstrap
# makes its base image without a registry) and tests/it/deploy_files.rs (docker-compose validates
# deploy/compose.yaml offline).
command -v podman >/dev/null || apt_install podman
command -v runc >/dev/null || apt_install runc
command -v debootstrap >/dev/null || apt_install debootstrap
command -v docker-compose >/dev/null || apt_install docker-compose
# Headless Chromium and its WebDriver: tests/it/browser.rs starts both on free ports.
command -v chromium >/dev/null && command -v chromedriver >/dev/null || apt_install chromium chromium-driver
