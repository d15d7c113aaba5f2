#!/bin/sh
# Writes the demo's TLS files into CERT_DIR (default /certs): a private CA
# (ca.pem, what the Collector trusts) and auditrail's server certificate
# for the names auditrail and localhost (auditrail.pem, auditrail-key.pem).
# Run once by the `certs` service of docker-compose.yml; does nothing when
# the files exist. For anything but the demo, use your own CA.
set -eu
dir="${CERT_DIR:-/certs}"
# The uid auditrail runs as in its image (Dockerfile), which must read the key.
owner="${CERT_OWNER:-10001}"
mkdir -p "$dir"
cd "$dir"
if [ -s ca.pem ] && [ -s auditrail.pem ] && [ -s auditrail-key.pem ]; then
    echo "certificates already in $dir"
    exit 0
fi
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout ca-key.pem -out ca.pem -days 825 -subj "/CN=auditrail demo CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout auditrail-key.pem -out auditrail.csr -subj "/CN=auditrail"
printf '%s\n' \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" \
    "subjectAltName=DNS:auditrail,DNS:localhost,IP:127.0.0.1" > auditrail.ext
openssl x509 -req -in auditrail.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
    -out auditrail.pem -days 825 -extfile auditrail.ext
rm -f auditrail.csr auditrail.ext ca.srl
chmod 644 ca.pem auditrail.pem
chmod 600 ca-key.pem auditrail-key.pem
# Only auditrail reads its key; the CA key stays with root.
chown "$owner" auditrail-key.pem 2>/dev/null || true
echo "wrote ca.pem, auditrail.pem and auditrail-key.pem to $dir"
