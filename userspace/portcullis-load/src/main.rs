//! `portcullis-load`: see the library's documentation and `portcullis-load --help`.

use std::process::ExitCode;

fn main() -> ExitCode {
    portcullis_load::cli::main()
}
