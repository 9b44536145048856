//! A local HTTP server that serves the real collateral of `../shared/testvectors` the way
//! Intel PCS/PCCS and AMD KDS do. Shared by the collateral and CLI tests.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// A file of `../shared/testvectors`.
pub(crate) fn vector(path: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/testvectors")
        .join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A response: status, headers, body.
type Route = (u16, Vec<(String, String)>, Vec<u8>);

/// A real HTTP/1.1 server on a loopback port, answering from a table of path+query routes
/// and recording every request line.
pub(crate) struct Server {
    pub(crate) base: String,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub(crate) fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let (r, q) = (routes.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                // Skip the request headers.
                let mut h = String::new();
                while reader.read_line(&mut h).is_ok() && h != "\r\n" && !h.is_empty() {
                    h.clear();
                }
                let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
                q.lock().unwrap().push(target.clone());
                let (status, headers, body) = r.lock().unwrap().get(&target).cloned().unwrap_or((
                    404,
                    Vec::new(),
                    b"not found".to_vec(),
                ));
                let mut out = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let _ = stream.write_all(out.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        Server {
            base,
            routes,
            requests,
        }
    }

    pub(crate) fn route(
        &self,
        target: &str,
        status: u16,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) {
        let headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        self.routes
            .lock()
            .unwrap()
            .insert(target.to_string(), (status, headers, body));
    }

    pub(crate) fn take_requests(&self) -> Vec<String> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }
}

/// Percent-encodes a PEM chain the way PCS sends it in a header.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Serves a collateral JSON file's items at the PCCS paths for `tee` and `fmspc`.
pub(crate) fn serve_dcap(server: &Server, collateral_file: &str, tee: &str, fmspc: &str, ca: &str) {
    let c: serde_json::Value =
        serde_json::from_slice(&vector(&format!("dcap/{collateral_file}"))).unwrap();
    let text = |k: &str| c[k].as_str().unwrap().to_string();
    let bytes = |k: &str| hex::decode(c[k].as_str().unwrap()).unwrap();
    server.route(
        &format!("/sgx/certification/v4/pckcrl?ca={ca}&encoding=der"),
        200,
        &[(
            "SGX-PCK-CRL-Issuer-Chain",
            pct(&text("pck_crl_issuer_chain")),
        )],
        bytes("pck_crl"),
    );
    let tcb_body = format!(
        "{{\"tcbInfo\":{},\"signature\":\"{}\"}}",
        text("tcb_info"),
        hex::encode(bytes("tcb_info_signature"))
    );
    server.route(
        &format!("/{tee}/certification/v4/tcb?fmspc={fmspc}"),
        200,
        &[("TCB-Info-Issuer-Chain", pct(&text("tcb_info_issuer_chain")))],
        tcb_body.into_bytes(),
    );
    let qe_body = format!(
        "{{\"enclaveIdentity\":{},\"signature\":\"{}\"}}",
        text("qe_identity"),
        hex::encode(bytes("qe_identity_signature"))
    );
    server.route(
        &format!("/{tee}/certification/v4/qe/identity"),
        200,
        &[(
            "SGX-Enclave-Identity-Issuer-Chain",
            pct(&text("qe_identity_issuer_chain")),
        )],
        qe_body.into_bytes(),
    );
    // PCCS serves the root CA CRL as hex text.
    server.route(
        "/sgx/certification/v4/rootcacrl",
        200,
        &[],
        hex::encode(bytes("root_ca_crl")).into_bytes(),
    );
}
