//! `sealdb-vault`: the vault process.
//! `sealdb-vault --listen ADDR --tee sim|gramine|tsm --owner HEX [--socket PATH] [--tee-dir DIR]`.

use std::process::ExitCode;
use std::sync::Arc;

use sealdb_vault::Vault;

const USAGE: &str =
    "usage: sealdb-vault --listen ADDR --tee sim|gramine|tsm --owner HEX [--socket PATH] [--tee-dir DIR]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sealdb-vault: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut listen = None;
    let mut tee = None;
    let mut tee_dir = None;
    let mut socket = None;
    let mut owner = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--listen" => listen = Some(value()?),
            "--tee" => tee = Some(value()?),
            "--tee-dir" => tee_dir = Some(value()?),
            "--socket" => socket = Some(std::path::PathBuf::from(value()?)),
            "--owner" => owner = Some(value()?),
            _ => return Err(format!("unknown argument {a}\n{USAGE}")),
        }
    }
    let listen = listen.ok_or_else(|| format!("--listen is required\n{USAGE}"))?;
    let tee = tee.ok_or_else(|| format!("--tee is required\n{USAGE}"))?;
    let owner = owner.ok_or_else(|| format!("--owner is required\n{USAGE}"))?;
    let owner = sealdb_vault::parse_owner(&owner).map_err(|e| e.to_string())?;
    let tee = sealdb_vault::tee_by_name(&tee, tee_dir.as_deref()).map_err(|e| e.to_string())?;
    sealdb_vault::serve(&listen, socket.as_deref(), Arc::new(Vault::new(tee, owner)))
        .map_err(|e| e.to_string())
}
