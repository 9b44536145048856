//! `sealdb attest`: verify evidence locally, fetching collateral when asked.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use sealdb_attest::{Endorsements, Evidence, Format, Policy};
use sealdb_collateral::{Cache, Fetcher, SnpProduct};

use crate::{fail, Failure};

#[derive(Subcommand)]
pub(crate) enum AttestCommand {
    /// Verify evidence locally: prints the claims as JSON and exits 0 when the policy accepts;
    /// otherwise prints the reason on stderr and exits 1.
    Verify {
        /// sgx, tdx, snp, nitro or sim.
        #[arg(long)]
        format: Format,
        /// The evidence (binary or hex text).
        #[arg(long)]
        evidence: PathBuf,
        #[command(flatten)]
        endorse: EndorsementArgs,
        /// Policy file (TOML). Without it: authenticity, freshness and debug only.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Expected report_data (hex; compared with the start of the evidence's report data,
        /// the rest of which must be zero).
        #[arg(long)]
        report_data: Option<String>,
        /// Judge at this time (Unix seconds); default now.
        #[arg(long)]
        at: Option<u64>,
        /// Verify this many times and print verifications per second (benchmark).
        #[arg(long)]
        repeat: Option<u32>,
    },
    /// Fetch the collateral for evidence and save it for offline use: DCAP collateral JSON
    /// (for --collateral) or the SEV-SNP VCEK in DER (for --vcek).
    Fetch {
        /// sgx, tdx or snp.
        #[arg(long)]
        format: Format,
        /// The evidence (binary or hex text).
        #[arg(long)]
        evidence: PathBuf,
        /// Where to write the collateral.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        source: FetchArgs,
    },
}

/// What vouches for the evidence: files, or fetched collateral.
#[derive(Args, Default)]
pub(crate) struct EndorsementArgs {
    /// Collateral (DCAP: the JSON collateral).
    #[arg(long)]
    collateral: Option<PathBuf>,
    /// The VCEK certificate (SEV-SNP; DER or PEM).
    #[arg(long)]
    vcek: Option<PathBuf>,
    /// Fetch what --collateral or --vcek does not give (Intel PCS/PCCS, AMD KDS).
    #[arg(long)]
    fetch: bool,
    #[command(flatten)]
    source: FetchArgs,
    /// Accept only `sim` evidence signed by this simulated platform key (hex).
    #[arg(long)]
    sim_platform_key: Option<String>,
}

impl EndorsementArgs {
    /// Accepts only `sim` evidence of this simulated platform key (hex).
    pub(crate) fn pin_sim_platform(&mut self, key_hex: &str) {
        self.sim_platform_key = Some(key_hex.to_string());
    }

    /// The endorsements for `bytes` of `format`: from files, fetched, or none.
    pub(crate) fn endorsements(
        &self,
        format: Format,
        bytes: &[u8],
    ) -> Result<Endorsements, Failure> {
        let mut endorsements = Endorsements::default();
        let dcap = matches!(format, Format::Sgx | Format::Tdx);
        // Checked first, so a bad value fails before anything is fetched.
        let sim_key = self
            .sim_platform_key
            .as_ref()
            .map(|k| -> Result<[u8; 32], Failure> {
                if format != Format::Sim {
                    return Err(fail("--sim-platform-key applies only to sim evidence"));
                }
                hex::decode(k.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| fail("--sim-platform-key must be 64 hex digits (32 bytes)"))
            })
            .transpose()?;
        if let Some(c) = &self.collateral {
            let text = String::from_utf8(read_file(c, "collateral")?)
                .map_err(|_| fail(format!("collateral {} is not UTF-8 JSON", c.display())))?;
            endorsements = dcap_endorsements(&text, &c.display().to_string())?;
        } else if self.fetch && dcap {
            let json = fetch_dcap(&self.source, bytes)?;
            endorsements = dcap_endorsements(&json, "fetched collateral")?;
        }
        if let Some(v) = &self.vcek {
            endorsements = endorsements.with_snp_vcek(read_certificate(v, "VCEK")?);
        } else if self.fetch && format == Format::Snp {
            endorsements = endorsements.with_snp_vcek(fetch_vcek(&self.source, bytes)?);
        }
        if let Some(key) = sim_key {
            endorsements = endorsements.with_sim_platform_key(key);
        }
        if self.fetch && !(dcap || format == Format::Snp) {
            eprintln!("warning: --fetch: {format:?} evidence needs no fetched collateral");
        }
        Ok(endorsements)
    }
}

/// Where collateral comes from and how it is cached.
#[derive(Args)]
pub(crate) struct FetchArgs {
    /// A PCCS to ask for Intel collateral instead of Intel PCS (https; http only on this
    /// machine).
    #[arg(long)]
    pccs_url: Option<String>,
    /// The CA certificate (PEM or DER) of the PCCS's TLS certificate, trusted instead of the
    /// public web roots for Intel collateral.
    #[arg(long)]
    pccs_ca: Option<PathBuf>,
    /// AMD KDS or a mirror of it.
    #[arg(long, default_value = sealdb_collateral::AMD_KDS_URL)]
    kds_url: String,
    /// The SEV-SNP processor (milan, genoa, turin), for reports that do not name it.
    #[arg(long)]
    product: Option<SnpProduct>,
    /// Cache directory; default `$XDG_CACHE_HOME/sealdb/collateral` or
    /// `~/.cache/sealdb/collateral`.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Do not use the cache.
    #[arg(long, conflicts_with_all = ["cache_dir", "offline"])]
    no_cache: bool,
    /// Use only the cache, never the network.
    #[arg(long)]
    offline: bool,
    /// Reuse a cached response for at most this many seconds (if it does not expire first).
    #[arg(long, default_value_t = sealdb_collateral::DEFAULT_MAX_AGE_SECS)]
    max_age: u64,
}

impl Default for FetchArgs {
    /// The command line's defaults.
    fn default() -> Self {
        FetchArgs {
            pccs_url: None,
            pccs_ca: None,
            kds_url: sealdb_collateral::AMD_KDS_URL.into(),
            product: None,
            cache_dir: None,
            no_cache: false,
            offline: false,
            max_age: sealdb_collateral::DEFAULT_MAX_AGE_SECS,
        }
    }
}

impl FetchArgs {
    fn fetcher(&self) -> Result<Fetcher, Failure> {
        let mut f = Fetcher::new()
            .with_kds(&self.kds_url)
            .with_max_age(self.max_age);
        if let Some(u) = &self.pccs_url {
            f = f.with_pccs(u);
        }
        if let Some(ca) = &self.pccs_ca {
            f = f.with_intel_ca(read_certificate(ca, "PCCS CA certificate")?);
        }
        if !self.no_cache {
            let dir = match &self.cache_dir {
                Some(d) => d.clone(),
                None => Cache::default_dir().ok_or_else(|| {
                    fail("no cache directory: set HOME or XDG_CACHE_HOME, or give --cache-dir")
                })?,
            };
            let mut cache = Cache::open(dir).map_err(|e| fail(e.to_string()))?;
            if self.offline {
                cache = cache.offline();
            }
            f = f.with_cache(cache);
        }
        Ok(f)
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| fail(format!("cannot read {what} {}: {e}", path.display())))
}

/// A certificate file, PEM or DER; the DER.
fn read_certificate(path: &Path, what: &str) -> Result<Vec<u8>, Failure> {
    let bytes = read_file(path, what)?;
    if bytes.starts_with(b"-----BEGIN") {
        sealdb_attest::pem_to_der(&bytes)
            .ok_or_else(|| fail(format!("{what} {}: bad PEM", path.display())))
    } else {
        Ok(bytes)
    }
}

/// Evidence files may be binary or hex text (whitespace ignored).
fn binary_or_hex(bytes: Vec<u8>) -> Vec<u8> {
    let text: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if !text.is_empty() && text.len().is_multiple_of(2) && text.iter().all(u8::is_ascii_hexdigit) {
        if let Ok(decoded) = hex::decode(&text) {
            return decoded;
        }
    }
    bytes
}

/// What was fetched, for stderr.
fn report<T>(what: &str, f: &sealdb_collateral::Fetched<T>) {
    for w in &f.warnings {
        eprintln!("warning: {w}");
    }
    eprintln!(
        "{what}: {} responses fetched, {} from the cache",
        f.fetched, f.from_cache
    );
}

fn fetch_dcap(source: &FetchArgs, quote: &[u8]) -> Result<String, Failure> {
    let f = source
        .fetcher()?
        .dcap_collateral(quote, unix_now())
        .map_err(|e| fail(format!("fetching DCAP collateral: {e}")))?;
    report("DCAP collateral", &f);
    Ok(f.value)
}

fn fetch_vcek(source: &FetchArgs, report_bytes: &[u8]) -> Result<Vec<u8>, Failure> {
    let f = source
        .fetcher()?
        .snp_vcek(report_bytes, source.product, unix_now())
        .map_err(|e| fail(format!("fetching the VCEK: {e}")))?;
    report("VCEK", &f);
    Ok(f.value)
}

fn dcap_endorsements(json: &str, origin: &str) -> Result<Endorsements, Failure> {
    Endorsements::dcap_collateral_json(json).map_err(|e| fail(format!("{origin}: {e}")))
}

pub(crate) fn run(cmd: AttestCommand) -> Result<(), Failure> {
    match cmd {
        AttestCommand::Verify {
            format,
            evidence,
            endorse,
            policy,
            report_data,
            at,
            repeat,
        } => {
            let bytes = binary_or_hex(read_file(&evidence, "evidence")?);
            let endorsements = endorse.endorsements(format, &bytes)?;
            let policy = read_policy(policy.as_deref())?;
            let expected = report_data
                .map(|h| {
                    hex::decode(h.trim())
                        .map_err(|e| fail(format!("--report-data is not hex: {e}")))
                })
                .transpose()?;
            if expected.is_none() && repeat.is_none() {
                eprintln!(
                    "warning: no --report-data: nothing ties this evidence to a session, so a \
                     replayed copy is accepted too"
                );
            }
            let now = at.unwrap_or_else(unix_now);
            let ev = Evidence {
                format,
                bytes: &bytes,
            };
            let check =
                || sealdb_attest::verify(&ev, &endorsements, &policy, expected.as_deref(), now);
            if let Some(n) = repeat {
                let t = std::time::Instant::now();
                let accepted = (0..n).filter(|_| check().is_ok()).count();
                let s = t.elapsed().as_secs_f64();
                say!(
                    "format={format:?} verifications={n} accepted={accepted} verifications_per_s={:.0}",
                    f64::from(n) / s
                );
                return Ok(());
            }
            match check() {
                Ok(claims) => {
                    warn_limits_without_effect(&policy, &claims);
                    say!(
                        "{}",
                        serde_json::to_string_pretty(&claims).expect("JSON of plain values")
                    );
                    Ok(())
                }
                Err(reason) => Err(Failure(format!("rejected: {reason}"), 1)),
            }
        }
        AttestCommand::Fetch {
            format,
            evidence,
            out,
            source,
        } => {
            let bytes = binary_or_hex(read_file(&evidence, "evidence")?);
            let data = match format {
                Format::Sgx | Format::Tdx => fetch_dcap(&source, &bytes)?.into_bytes(),
                Format::Snp => fetch_vcek(&source, &bytes)?,
                other => {
                    return Err(fail(format!(
                        "{other:?} evidence needs no fetched collateral"
                    )))
                }
            };
            write_atomic(&out, &data)?;
            say!("wrote {} ({} bytes)", out.display(), data.len());
            Ok(())
        }
    }
}

/// Says on stderr which of the policy's age limits the accepted evidence was not judged by.
pub(crate) fn warn_limits_without_effect(policy: &Policy, claims: &sealdb_attest::Claims) {
    for name in policy.limits_without_effect(claims) {
        eprintln!(
            "warning: {name} does not apply: {:?} evidence has no date it limits",
            claims.format
        );
    }
}

pub(crate) fn read_policy(path: Option<&Path>) -> Result<Policy, Failure> {
    match path {
        Some(p) => {
            let text = String::from_utf8(read_file(p, "policy")?)
                .map_err(|_| fail(format!("policy {} is not UTF-8", p.display())))?;
            Policy::from_toml(&text).map_err(|e| fail(format!("{}: {e}", p.display())))
        }
        None => {
            eprintln!(
                "warning: no --policy: checking authenticity, freshness and debug only; any \
                 genuine TEE of any measurement is accepted"
            );
            Ok(Policy::default())
        }
    }
}

/// Writes `out` whole or not at all: a temporary file beside it, synced, then renamed.
fn write_atomic(out: &Path, data: &[u8]) -> Result<(), Failure> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let err = |e: std::io::Error| fail(format!("cannot write {}: {e}", out.display()));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    std::io::Write::write_all(&mut tmp, data).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(out).map_err(|e| err(e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}
