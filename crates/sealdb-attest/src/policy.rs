//! The owner's policy: which formats, measurements, TCB statuses and versions are acceptable.
//! Written as TOML, for example:
//!
//! ```toml
//! formats = ["sgx", "tdx"]
//! allowed_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
//! allow_debug = false
//! max_collateral_age_secs = 2592000   # 30 days
//! max_evidence_age_secs = 300         # Nitro documents at most 5 minutes old
//! rejected_advisories = ["INTEL-SA-00615"]
//! [measurements]
//! mr_enclave = ["c1a2…"]          # any of these
//! [min_versions]
//! isv_svn = 2
//! tcb_info_tcb_evaluation_data_number = 17
//! [versions]
//! isv_prod_id = 1
//! [max_versions]
//! vmpl = 0                        # SEV-SNP: at most this VMPL
//! ```

use std::collections::BTreeMap;

use crate::{Claims, Format, Rejection};

/// What the owner accepts. The default accepts any authentic, non-debug evidence of the
/// hardware formats (not `sim`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Allowed formats by name (`sgx`, `tdx`, `snp`, `nitro`, `sim`); absent: all but `sim`
    /// (an empty list allows none).
    #[serde(default)]
    pub formats: Option<Vec<String>>,
    /// Accept debug-mode TEEs (never for real keys).
    #[serde(default)]
    pub allow_debug: bool,
    /// Accept the simulated TEE (development only). Its evidence always says debug; this
    /// setting accepts that without `allow_debug`.
    #[serde(default)]
    pub allow_insecure_simulation: bool,
    /// Accepted platform TCB statuses of formats that have one (DCAP); absent: any the
    /// vendor's collateral gives (an empty list allows none).
    #[serde(default)]
    pub allowed_tcb_statuses: Option<Vec<String>>,
    /// Security advisories that refuse the evidence when the collateral lists them for the
    /// platform (e.g. `INTEL-SA-00615`).
    #[serde(default)]
    pub rejected_advisories: Vec<String>,
    /// The oldest acceptable collateral, in seconds before the verification time, for
    /// formats with dated collateral (DCAP: TCB info and QE identity issue dates, PCK CRL
    /// `thisUpdate`; see `Claims::collateral_issued_at`).
    #[serde(default)]
    pub max_collateral_age_secs: Option<u64>,
    /// The oldest acceptable evidence, in seconds before the verification time, for formats
    /// that date it (Nitro's `timestamp`; see `Claims::evidence_created_at`).
    #[serde(default)]
    pub max_evidence_age_secs: Option<u64>,
    /// Reference measurements by claim name: the claim must equal one of the values (hex).
    #[serde(default)]
    pub measurements: BTreeMap<String, Vec<String>>,
    /// Exact versions or ids by claim name (e.g. `isv_prod_id`).
    #[serde(default)]
    pub versions: BTreeMap<String, u64>,
    /// Minimum versions by claim name (e.g. `isv_svn`).
    #[serde(default)]
    pub min_versions: BTreeMap<String, u64>,
    /// Maximum values by claim name (e.g. SEV-SNP `vmpl = 0`: the report was requested
    /// from the most privileged level).
    #[serde(default)]
    pub max_versions: BTreeMap<String, u64>,
}

impl Policy {
    /// Parses a policy file.
    pub fn from_toml(text: &str) -> Result<Policy, Rejection> {
        toml::from_str(text).map_err(|e| Rejection::Malformed {
            what: "policy",
            detail: e.to_string(),
        })
    }

    pub(crate) fn allows_format(&self, f: Format) -> bool {
        let name = match f {
            Format::Sgx => "sgx",
            Format::Tdx => "tdx",
            Format::Snp => "snp",
            Format::Nitro => "nitro",
            Format::Sim => "sim",
        };
        if f == Format::Sim && !self.allow_insecure_simulation {
            return false;
        }
        self.formats
            .as_ref()
            .is_none_or(|list| list.iter().any(|x| x == name))
    }

    /// The policy's age limits that `claims` give nothing to apply to (their format has no
    /// dated collateral, or does not date its evidence): accepted evidence was not judged
    /// by them, which a caller may want to say.
    pub fn limits_without_effect(&self, claims: &Claims) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.max_collateral_age_secs.is_some() && claims.collateral_issued_at.is_none() {
            out.push("max_collateral_age_secs");
        }
        if self.max_evidence_age_secs.is_some() && claims.evidence_created_at.is_none() {
            out.push("max_evidence_age_secs");
        }
        out
    }

    /// Checks verified claims against the policy.
    pub(crate) fn evaluate(&self, c: &Claims) -> Result<(), Rejection> {
        // Simulated evidence is always debug; allowing simulation accepts that.
        let simulated = c.format == Format::Sim && self.allow_insecure_simulation;
        if c.debug && !self.allow_debug && !simulated {
            return Err(Rejection::Debug);
        }
        if let Some(a) = c.advisories.iter().find(|a| {
            self.rejected_advisories
                .iter()
                .any(|r| r.eq_ignore_ascii_case(a))
        }) {
            return Err(Rejection::Policy(format!("advisory {a} is rejected")));
        }
        if let (Some(max), Some(issued)) = (self.max_collateral_age_secs, c.collateral_issued_at) {
            let age = c.verified_at.saturating_sub(issued);
            if age > max {
                return Err(Rejection::Policy(format!(
                    "collateral issued at {issued} is {age} s old, the policy allows {max} s"
                )));
            }
        }
        if let (Some(max), Some(made)) = (self.max_evidence_age_secs, c.evidence_created_at) {
            let age = c.verified_at.saturating_sub(made);
            if age > max {
                return Err(Rejection::Policy(format!(
                    "evidence made at {made} is {age} s old, the policy allows {max} s"
                )));
            }
        }
        let has_status = c.tcb_status != "NotApplicable";
        let status_ok = self
            .allowed_tcb_statuses
            .as_ref()
            .is_none_or(|list| list.contains(&c.tcb_status));
        if has_status && !status_ok {
            return Err(Rejection::Policy(format!(
                "TCB status {} is not allowed",
                c.tcb_status
            )));
        }
        for (name, allowed) in &self.measurements {
            let actual = c.measurements.get(name).ok_or_else(|| {
                Rejection::Policy(format!("the evidence has no measurement {name}"))
            })?;
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(actual)) {
                return Err(Rejection::Policy(format!(
                    "{name} {actual} is not a reference value"
                )));
            }
        }
        check_versions(
            &self.versions,
            c,
            |v, want| v == want,
            "the policy requires",
        )?;
        check_versions(
            &self.min_versions,
            c,
            |v, min| v >= min,
            "the policy's minimum is",
        )?;
        check_versions(
            &self.max_versions,
            c,
            |v, max| v <= max,
            "the policy's maximum is",
        )?;
        Ok(())
    }
}

/// Checks each `(name, bound)` of a version table against the claim `versions[name]`; a
/// claim the evidence lacks refuses it.
fn check_versions(
    table: &BTreeMap<String, u64>,
    c: &Claims,
    ok: fn(u64, u64) -> bool,
    refusal: &str,
) -> Result<(), Rejection> {
    for (name, bound) in table {
        match c.versions.get(name) {
            Some(v) if ok(*v, *bound) => {}
            Some(v) => {
                return Err(Rejection::Policy(format!(
                    "{name} is {v}; {refusal} {bound}"
                )))
            }
            None => return Err(Rejection::Policy(format!("the evidence has no {name}"))),
        }
    }
    Ok(())
}
