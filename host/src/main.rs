//! `usage-agent`: see `usage_agent::cli`.

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _};
use usage_agent::cli::{self, Cli, LogFormat};

fn main() -> ExitCode {
    let parsed =
        Cli::command().long_version(cli::long_version()).try_get_matches().and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(error) => return refused_command_line(error),
    };
    let format = cli.log_format;
    let level = cli.config_path().and_then(cli::config_log_level);
    cli::init_logging(format, level.as_deref());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("usage-agent: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout();
    match runtime.block_on(cli::run(cli, &mut stdout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // A closed pipe (`usage-agent usage | head`) is not a failure.
            if error.chain().any(|cause| {
                cause.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            // A JSON log reader must not meet a line it cannot parse.
            match format {
                LogFormat::Json => tracing::error!("{error:#}"),
                LogFormat::Text => eprintln!("usage-agent: {error:#}"),
            }
            if error.downcast_ref::<cli::Interrupted>().is_some() {
                return ExitCode::from(cli::EXIT_INTERRUPTED);
            }
            ExitCode::FAILURE
        }
    }
}

/// A command line clap refuses. With `--log-format json` on it, the refusal is a JSON
/// line like every other error; help and version texts are printed as they are.
fn refused_command_line(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let args: Vec<String> = std::env::args().collect();
    let wants_json = args.iter().enumerate().any(|(at, arg)| {
        arg == "--log-format=json" || (arg == "--log-format" && args.get(at + 1).is_some_and(|next| next == "json"))
    });
    let is_output = matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if !wants_json || is_output {
        error.exit()
    }
    cli::init_logging(LogFormat::Json, None);
    let message = error.render().to_string();
    tracing::error!("{}", message.trim_start_matches("error: ").trim_end());
    ExitCode::from(2)
}
