//! `quorumvm`: the one command of QuorumVM.
//!
//! Exit codes a script can rely on: 0 success; 1 a check said no (a signature that does not
//! verify); 2 a usage error; 65 invalid data (a compile error, a malformed or mismatched
//! package, a refused input value); 66 an input file that cannot be read; 74 an output that
//! cannot be written.

mod commands;
mod demo;
mod exit;
mod web;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "quorumvm",
    version,
    about = "Threshold execution of secret parametric functions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile DSL source into an (unsigned) program package component.
    Compile {
        /// The `.qvm` source.
        source: PathBuf,
        /// Where to write the package.
        #[arg(short, long)]
        output: PathBuf,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a package's manifest, signer, id and circuit figures.
    Inspect {
        package: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Evaluate a package in plain (no sharing): `x=3 income=1200.50 --secret w1=0.35`.
    EvalPlain {
        package: PathBuf,
        /// Inputs as NAME=VALUE.
        inputs: Vec<String>,
        /// Secret coefficients as NAME=VALUE (repeatable).
        #[arg(long = "secret", value_name = "NAME=VALUE")]
        secrets: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Make an ed25519 publisher key pair: PREFIX.key (secret) and PREFIX.pub.
    Keygen {
        /// Path prefix of the two key files.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Sign a package with a publisher key (embeds the signature in a custom section).
    Sign {
        package: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// Where to write the signed package (default: replace the input).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Verify a signed package against a publisher's public key; prints the package id.
    Verify {
        package: PathBuf,
        #[arg(long)]
        pubkey: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// A guided tour: compile, sign, verify and evaluate the example packages.
    Demo {
        /// Where the example sources are.
        #[arg(long, default_value = "packages")]
        packages: PathBuf,
        /// Where to write the demo's files.
        #[arg(long, default_value = "target/demo")]
        work: PathBuf,
    },
    /// Serve the browser demo of the compiler (a static directory).
    Web {
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        #[arg(long, default_value = "web/dist")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Compile {
            source,
            output,
            json,
        } => commands::compile(&source, &output, json),
        Command::Inspect { package, json } => commands::inspect(&package, json),
        Command::EvalPlain {
            package,
            inputs,
            secrets,
            json,
        } => commands::eval_plain(&package, &inputs, &secrets, json),
        Command::Keygen { output } => commands::keygen(&output),
        Command::Sign {
            package,
            key,
            output,
        } => commands::sign(&package, &key, output.as_deref()),
        Command::Verify {
            package,
            pubkey,
            json,
        } => commands::verify(&package, &pubkey, json),
        Command::Demo { packages, work } => demo::run(&packages, &work),
        Command::Web { addr, dir } => web::serve(addr, dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{failure}");
            ExitCode::from(failure.code as u8)
        }
    }
}
