//! The integration tests, one binary (one link of the crate): a module per area, sharing
//! the process harness and the fleet builder in `common`.

mod common;
mod grpc_common;

mod abuse_config;
mod abuse_grpc;
mod admin_http;
mod audit;
mod browser;
mod cli;
mod coap_formats;
mod container;
mod dashboard_http;
mod deploy_config;
mod deploy_files;
mod docs;
mod formats;
mod grpc_compat;
mod grpc_control;
mod grpc_faults;
mod grpc_net_spawn;
mod grpc_python;
mod grpc_realistic;
mod grpc_scale;
mod grpc_sink_events;
mod grpc_two_runtimes;
mod journal;
mod mqtt5_props;
mod mqtt_identity;
mod mqtt_session_faults;
mod mqtt_sessions;
mod mqtt_tokens;
mod mqtt_ws;
mod observability;
mod presets;
mod prometheus;
mod realistic;
mod replay;
mod scenario;
mod sink_amqp;
mod sink_coap;
mod sink_http;
mod sink_mqtt;
mod sparkplug;
