use clap::Parser;

fn main() {
    iot_sim::memcheck::tune_allocator();
    let mut cli = iot_sim::cli::Cli::parse();
    // The run id is fixed before the first log line, so that every line carries it.
    let (json, run_id) = cli.prepare_logging();
    iot_sim::logs::init(json, &run_id);
    let code = match iot_sim::cli::main(cli) {
        Ok(code) => code,
        Err(e) => {
            iot_sim::logs::notice_at("ERROR", &format!("error: {e:#}"), &[]);
            iot_sim::cli::exit::FAILED
        }
    };
    std::process::exit(code);
}
