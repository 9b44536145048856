#!/usr/bin/env bash
# Seed corpora for the evidence targets from the real samples in ../shared/testvectors
# (written under fuzz/corpus/, which git ignores: the samples are not copied into the
# repository). Run from anywhere; then `cargo fuzz run TARGET` picks up corpus/TARGET.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tv=${TESTVECTORS:-$here/../../shared/testvectors}
c=$here/corpus
mkdir -p "$c"/attest_dcap "$c"/attest_snp "$c"/attest_nitro "$c"/collateral
python3 - "$tv" "$c" <<'PY'
import os, struct, sys
tv, c = sys.argv[1:]
def rd(p): return open(os.path.join(tv, p), 'rb').read()
def wr(t, name, b): open(os.path.join(c, t, name), 'wb').write(b)
# attest_dcap: flag byte (bit 0 TDX, bit 1 collateral follows), u16 quote length, quote, JSON.
for flag, q, coll in [(0, 'sgx_quote', 'sgx_quote_collateral.json'),
                      (1, 'tdx_quote', 'tdx_quote_collateral.json'),
                      (1, 'tdx_quote_outdated', 'tdx_quote_outdated_collateral.json')]:
    quote, json = rd('dcap/' + q), rd('dcap/' + coll)
    wr('attest_dcap', q + '.bare', bytes([flag]) + quote)
    wr('attest_dcap', q + '.with-collateral', bytes([flag | 2]) + struct.pack('>H', len(quote)) + quote + json)
    wr('collateral', coll, json)
wr('attest_dcap', 'sgx_debug', b'\0' + rd('dcap/sgx_quote_debug_occlum.dat'))
wr('attest_dcap', 'tdx_debug', b'\1' + rd('dcap/tdx_quote_debug_td.dat'))
# attest_snp: the 1184-byte report, then the VCEK.
milan = bytes.fromhex(''.join(rd('snp/report_milan.hex').decode().split()))
wr('attest_snp', 'milan', milan + rd('snp/vcek_milan.der'))
wr('attest_snp', 'trustee', rd('snp/trustee-report.bin') + rd('snp/trustee-vcek.der'))
wr('attest_snp', 'invalid-vcek', milan + rd('snp/vcek-invalid.der'))
wr('collateral', 'vcek_milan.der', rd('snp/vcek_milan.der'))
# attest_nitro: the documents as they are.
wr('attest_nitro', 'attestation.cose', rd('nitro/attestation.cose'))
wr('attest_nitro', 'debug', rd('nitro/debug-mode-doc.cbor'))
PY
for d in attest_dcap attest_snp attest_nitro collateral; do
  echo "$d: $(find "$c/$d" -type f | wc -l) inputs"
done
