//! Collateral for attestation evidence, fetched from the vendors and cached on disk.
//!
//! [`sealdb_attest::verify`] is pure: it takes the endorsements as input. This crate gets
//! them. [`Fetcher::dcap_collateral`] asks Intel PCS (or a PCCS) for the PCK CRL, TCB info,
//! QE identity and root CA CRL that an SGX or TDX quote needs, and returns them as the
//! collateral JSON that [`sealdb_attest::Endorsements::dcap_collateral_json`] reads.
//! [`Fetcher::snp_vcek`] asks AMD KDS for the VCEK certificate of an SEV-SNP report's chip
//! and TCB.
//!
//! Collateral is signed by the vendor, so the transport is not trusted for authenticity:
//! what is fetched is checked by the verifier like collateral from a file. The cache
//! ([`Cache`]) keeps each response until the earlier of its own next update (CRL
//! `nextUpdate`, TCB info and QE identity `nextUpdate`) and the fetcher's maximum age; a VCEK
//! is kept until its certificate expires, since KDS serves the same certificate for the same
//! chip and TCB. An offline cache serves only what it holds.
//!
//! Only quotes that carry their PCK certificate chain (certification data type 5, as Gramine
//! and TDX produce) are supported; quotes with an encrypted PPID are refused with a clear
//! error.
#![forbid(unsafe_code)]

mod cache;
mod dcap;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod snp;

use std::time::Duration;

pub use cache::{Cache, CacheError};
pub use snp::SnpProduct;

/// Intel's Provisioning Certification Service.
pub const INTEL_PCS_URL: &str = "https://api.trustedservices.intel.com";
/// Where Intel PCS users get the SGX root CA's CRL (PCCS serves it itself).
pub const INTEL_ROOT_CA_CRL_URL: &str =
    "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der";
/// AMD's Key Distribution Service.
pub const AMD_KDS_URL: &str = "https://kdsintf.amd.com";
/// How long a cached response is reused at most, unless it expires earlier: one day.
pub const DEFAULT_MAX_AGE_SECS: u64 = 86_400;
/// The largest response accepted (collateral is a few KiB; CRLs can grow).
const MAX_BODY: u64 = 16 << 20;

/// Why collateral could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The evidence does not say what to fetch (unparseable, no PCK chain, masked chip id).
    #[error("evidence: {0}")]
    Evidence(String),
    /// The request did not complete (DNS, connection, TLS, timeout).
    #[error("GET {url}: {detail}")]
    Transport {
        /// The URL requested.
        url: String,
        /// The client's message.
        detail: String,
    },
    /// The service answered with an error status.
    #[error("GET {url}: HTTP status {status}")]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// The service answered, but not with what this protocol expects.
    #[error("GET {url}: {detail}")]
    Response {
        /// The URL requested.
        url: String,
        /// What is wrong with the response.
        detail: String,
    },
    /// The URL is not one collateral is fetched from: not HTTPS (plain HTTP is allowed only
    /// from this machine), or it carries credentials.
    #[error("refusing {url}: {detail}")]
    InsecureUrl {
        /// The URL.
        url: String,
        /// Why.
        detail: String,
    },
    /// The cache is offline and holds no fresh copy of this URL.
    #[error("offline: no fresh cached copy of {url}")]
    NotCached {
        /// The URL that would have been fetched.
        url: String,
    },
    /// The cache directory could not be read or written.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// Fetched collateral and how it was had.
#[derive(Debug)]
pub struct Fetched<T> {
    /// The collateral.
    pub value: T,
    /// Responses served from the cache.
    pub from_cache: usize,
    /// Responses fetched from the network.
    pub fetched: usize,
    /// Things the caller may want to show: cache entries that were unreadable and fetched
    /// again, fetched collateral that was not cached (it did not verify the evidence, or the
    /// cache could not be written).
    pub warnings: Vec<String>,
}

/// One HTTP response, reduced to what collateral needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    /// Headers asked for, by lowercase name (percent-decoded).
    pub(crate) headers: std::collections::BTreeMap<String, String>,
    pub(crate) body: Vec<u8>,
}

/// Where Intel collateral comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IntelService {
    /// Intel PCS (or a mirror of its API): the root CA CRL comes from its own URL.
    Pcs(String),
    /// A Provisioning Certificate Caching Service, which also serves the root CA CRL.
    Pccs(String),
}

/// Fetches collateral over HTTPS (or HTTP, for a local PCCS), through an optional cache.
#[derive(Debug)]
pub struct Fetcher {
    agent: ureq::Agent,
    /// For Intel collateral from a PCCS with its own certificate authority.
    intel_agent: Option<ureq::Agent>,
    intel: IntelService,
    root_ca_crl_url: String,
    kds_url: String,
    cache: Option<Cache>,
    max_age: u64,
}

impl Default for Fetcher {
    fn default() -> Self {
        Fetcher::new()
    }
}

impl Fetcher {
    /// A fetcher for Intel PCS and AMD KDS, without a cache.
    pub fn new() -> Self {
        Fetcher {
            agent: agent(None),
            intel_agent: None,
            intel: IntelService::Pcs(INTEL_PCS_URL.into()),
            root_ca_crl_url: INTEL_ROOT_CA_CRL_URL.into(),
            kds_url: AMD_KDS_URL.into(),
            cache: None,
            max_age: DEFAULT_MAX_AGE_SECS,
        }
    }

    /// Intel collateral from a PCCS at `url` (e.g. `https://pccs.example:8081`).
    pub fn with_pccs(mut self, url: &str) -> Self {
        self.intel = IntelService::Pccs(trim_base(url));
        self
    }

    /// Trusts `der`, a CA certificate, for the TLS connection to the PCCS (or PCS) instead of
    /// the public web roots: a PCCS usually has a certificate of its own.
    pub fn with_intel_ca(mut self, der: Vec<u8>) -> Self {
        self.intel_agent = Some(agent(Some(der)));
        self
    }

    fn is_intel(&self, url: &str) -> bool {
        let base = match &self.intel {
            IntelService::Pcs(u) | IntelService::Pccs(u) => u,
        };
        let under_base = url
            .strip_prefix(base.as_str())
            .is_some_and(|rest| rest.starts_with('/'));
        under_base || url == self.root_ca_crl_url
    }

    /// Intel collateral from a PCS-compatible service at `url` other than Intel's.
    pub fn with_pcs(mut self, url: &str) -> Self {
        self.intel = IntelService::Pcs(trim_base(url));
        self
    }

    /// Where the SGX root CA CRL is fetched from when using PCS.
    pub fn with_root_ca_crl_url(mut self, url: &str) -> Self {
        self.root_ca_crl_url = url.to_string();
        self
    }

    /// AMD KDS (or a mirror) at `url`.
    pub fn with_kds(mut self, url: &str) -> Self {
        self.kds_url = url.trim_end_matches('/').to_string();
        self
    }

    /// Keeps responses in `cache`.
    pub fn with_cache(mut self, cache: Cache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Reuses a cached response for at most `secs` seconds (default one day).
    pub fn with_max_age(mut self, secs: u64) -> Self {
        self.max_age = secs;
        self
    }

    /// The collateral JSON for an SGX or TDX quote, valid for
    /// [`sealdb_attest::Endorsements::dcap_collateral_json`]. `now` (Unix seconds) decides
    /// which cached responses are fresh.
    pub fn dcap_collateral(&self, quote: &[u8], now: u64) -> Result<Fetched<String>, FetchError> {
        let mut run = Run::new(self, now);
        let value = dcap::collateral(&mut run, quote)?;
        Ok(run.finish(value))
    }

    /// The VCEK certificate (DER) for an SEV-SNP report. Reports of version 3 and later name
    /// their processor; for older ones `product` must be given.
    pub fn snp_vcek(
        &self,
        report: &[u8],
        product: Option<SnpProduct>,
        now: u64,
    ) -> Result<Fetched<Vec<u8>>, FetchError> {
        let mut run = Run::new(self, now);
        let value = snp::vcek(&mut run, report, product)?;
        Ok(run.finish(value))
    }

    fn network_get(&self, url: &str, headers: &[&str]) -> Result<Response, FetchError> {
        check_url(url)?;
        let transport = |e: ureq::Error| FetchError::Transport {
            url: url.to_string(),
            detail: e.to_string(),
        };
        let agent = match &self.intel_agent {
            Some(a) if self.is_intel(url) => a,
            _ => &self.agent,
        };
        let mut resp = agent.get(url).call().map_err(transport)?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(FetchError::Status {
                url: url.to_string(),
                status,
            });
        }
        let mut found = std::collections::BTreeMap::new();
        for name in headers {
            if let Some(v) = resp.headers().get(*name) {
                let raw = v.to_str().map_err(|_| FetchError::Response {
                    url: url.to_string(),
                    detail: format!("header {name} is not visible ASCII"),
                })?;
                let decoded = percent_encoding::percent_decode_str(raw)
                    .decode_utf8()
                    .map_err(|_| FetchError::Response {
                        url: url.to_string(),
                        detail: format!("header {name} is not percent-encoded UTF-8"),
                    })?;
                found.insert(name.to_ascii_lowercase(), decoded.into_owned());
            }
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(transport)?;
        Ok(Response {
            headers: found,
            body,
        })
    }
}

/// Collateral is fetched over HTTPS; plain HTTP only from this machine (a local PCCS, tests).
/// URLs with credentials are refused: they would be printed in errors and kept in the cache.
fn check_url(url: &str) -> Result<(), FetchError> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // The URL as shown in the error: without credentials.
    let shown = match authority.rsplit_once('@') {
        Some((_, host)) => url.replacen(authority, &format!("…@{host}"), 1),
        None => url.to_string(),
    };
    let insecure = |detail: &str| FetchError::InsecureUrl {
        url: shown.clone(),
        detail: detail.to_string(),
    };
    if scheme.is_empty() {
        return Err(insecure("not an absolute URL"));
    }
    if authority.contains('@') {
        return Err(insecure("credentials in URLs are not accepted"));
    }
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Ok(()),
        "http" if matches!(host, "127.0.0.1" | "localhost" | "[::1]") => Ok(()),
        "http" => Err(insecure(
            "plain HTTP is accepted only from this machine (127.0.0.1, localhost, [::1])",
        )),
        _ => Err(insecure("only https URLs are accepted")),
    }
}

/// An HTTP agent: one-minute timeout, no redirects (a redirect is an error status), the
/// public web roots or only `ca`.
fn agent(ca: Option<Vec<u8>>) -> ureq::Agent {
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(der) = ca {
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&[
            ureq::tls::Certificate::from_der(&der).to_owned(),
        ]));
    }
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .max_redirects(0)
        .tls_config(tls.build())
        .user_agent(concat!("sealdb/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

fn trim_base(url: &str) -> String {
    url.trim_end_matches('/')
        .trim_end_matches("/sgx/certification/v4")
        .trim_end_matches("/tdx/certification/v4")
        .to_string()
}

/// One fetch of a set of collateral: the fetcher, the time, and what happened. Responses
/// fetched from the network wait in `pending` and reach the cache only through
/// [`Run::commit`], after the caller has checked that they verify the evidence.
pub(crate) struct Run<'a> {
    fetcher: &'a Fetcher,
    now: u64,
    from_cache: usize,
    fetched: usize,
    warnings: Vec<String>,
    pending: Vec<(String, Response, u64)>,
}

impl<'a> Run<'a> {
    fn new(fetcher: &'a Fetcher, now: u64) -> Self {
        Run {
            fetcher,
            now,
            from_cache: 0,
            fetched: 0,
            warnings: Vec::new(),
            pending: Vec::new(),
        }
    }

    fn finish<T>(self, value: T) -> Fetched<T> {
        Fetched {
            value,
            from_cache: self.from_cache,
            fetched: self.fetched,
            warnings: self.warnings,
        }
    }

    pub(crate) fn fetcher(&self) -> &Fetcher {
        self.fetcher
    }

    pub(crate) fn now(&self) -> u64 {
        self.now
    }

    /// Caches what was fetched, or, if `verdict` is an error, says why it was not cached.
    pub(crate) fn commit(&mut self, verdict: Result<(), String>) {
        let pending = std::mem::take(&mut self.pending);
        let Some(cache) = &self.fetcher.cache else {
            return;
        };
        if let Err(why) = verdict {
            if !pending.is_empty() {
                self.warnings
                    .push(format!("fetched collateral not cached: {why}"));
            }
            return;
        }
        for (url, resp, expires) in pending {
            if let Err(e) = cache.store(&url, &resp, self.now, expires) {
                self.warnings.push(format!("{e} (not cached)"));
            }
        }
    }

    /// GETs `url` through the cache. `expiry` tells when the content itself goes stale
    /// (`None`: unknown); `immutable` content (the same for the same URL) is kept until then
    /// regardless of the maximum age.
    pub(crate) fn get(
        &mut self,
        url: &str,
        headers: &[&str],
        expiry: impl Fn(&Response) -> Option<u64>,
        immutable: bool,
    ) -> Result<Response, FetchError> {
        let f = self.fetcher;
        if let Some(cache) = &f.cache {
            let max_age = (!immutable).then_some(f.max_age);
            match cache.load(url, self.now, max_age) {
                Ok(Some(resp)) => {
                    self.from_cache += 1;
                    return Ok(resp);
                }
                Ok(None) => {}
                Err(e) if cache.is_offline() => return Err(e.into()),
                Err(e) => self.warnings.push(format!("{e}; fetching it again")),
            }
            if cache.is_offline() {
                return Err(FetchError::NotCached {
                    url: url.to_string(),
                });
            }
        }
        let resp = f.network_get(url, headers)?;
        self.fetched += 1;
        let by_age = self.now.saturating_add(f.max_age);
        let expires = match (expiry(&resp), immutable) {
            (Some(t), true) => t,
            (Some(t), false) => t.min(by_age),
            (None, _) => by_age,
        };
        if expires > self.now {
            self.pending.push((url.to_string(), resp.clone(), expires));
        }
        Ok(resp)
    }
}

/// The Unix seconds of an X.509 time.
pub(crate) fn x509_seconds(t: &x509_cert::time::Time) -> u64 {
    t.to_unix_duration().as_secs()
}
