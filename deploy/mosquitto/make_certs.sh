#!/usr/bin/env bash
# Make a TEST certificate authority and certificates for the cityctl Mosquitto broker.
#
#   deploy/mosquitto/make_certs.sh DIR [CLIENT_NAME ...]
#
# Writes into DIR (created if missing):
#   ca.crt, ca.key                  the test CA (10 years)
#   server.crt, server.key          the broker's certificate, SAN: localhost, 127.0.0.1, ::1
#                                   and every name in $CITYCTL_SERVER_NAMES (space separated,
#                                   e.g. "broker.city.example 10.0.0.5")
#   client-NAME.crt, client-NAME.key  one per CLIENT_NAME (CN = NAME), for brokers that
#                                   require client certificates
# Idempotent: a file that already exists is kept (delete it to make a new one), so running it
# again only adds what is missing and never invalidates certificates already deployed.
# Keys are 0600. This is a test/bench CA; in production use the city's PKI and keep the CA key
# off the broker.
set -euo pipefail

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit $(( $# < 1 ? 2 : 0 ))
fi
dir=$1
shift
days=${CITYCTL_CERT_DAYS:-825}   # below the 825-day limit some TLS clients enforce
mkdir -p "$dir"
cd "$dir"
umask 077

if [[ ! -f ca.key || ! -f ca.crt ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
        -keyout ca.key -out ca.crt -subj "/O=cityctl test/CN=cityctl test CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    echo "make_certs: made CA $dir/ca.crt"
fi

# sign NAME EXTFILE: a key and a certificate signed by the CA.
sign() {
    local name=$1 ext=$2 cn=$3
    [[ -f $name.key && -f $name.crt ]] && return 0
    openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$name.key" -out "$name.csr" \
        -subj "/O=cityctl test/CN=$cn" 2>/dev/null
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
        -out "$name.crt" -days "$days" -sha256 -extfile "$ext" 2>/dev/null
    rm -f "$name.csr"
    echo "make_certs: made $dir/$name.crt (CN=$cn)"
}

san="DNS:localhost,IP:127.0.0.1,IP:::1"
for extra in ${CITYCTL_SERVER_NAMES:-}; do
    if [[ $extra =~ ^[0-9.]+$ || $extra == *:* ]]; then san+=",IP:$extra"; else san+=",DNS:$extra"; fi
done
ext=$(mktemp)
trap 'rm -f "$ext"' EXIT
printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" "subjectAltName=$san" >"$ext"
sign server "$ext" localhost

printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=clientAuth" >"$ext"
for client in "$@"; do
    [[ $client =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "make_certs: bad client name $client" >&2; exit 2; }
    sign "client-$client" "$ext" "$client"
done
# Mosquitto runs as user mosquitto: it must read the key (install with
# `install -o mosquitto -g mosquitto -m 0600 server.key /etc/mosquitto/certs/`).
chmod 0644 ca.crt server.crt client-*.crt 2>/dev/null || true
