#!/bin/bash
# kiln-nbd with TLS: X.509 (server and client certificates made here with
# openssl) and PSK, checked with nbdinfo/nbdcopy (libnbd, GnuTLS) and qemu-img.
source "$KILN_INTEROP_LIB"
source "$(dirname "${BASH_SOURCE[0]}")/nbd_lib.sh"

qemu-img create -q -f raw disk.raw 8M
qemu-io -f raw -c 'write -P 0x5a 1M 1M' disk.raw >/dev/null

# A CA, a server certificate and a client certificate.
mkdir -p server client other
cat > ext.cnf <<'CNF'
[server]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
[client]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
CNF
make_ca() {  # DIR
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$1/ca-key.pem" -out "$1/ca-cert.pem" -days 2 \
    -subj "/CN=Kiln test CA $1" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}
make_cert() {  # CA_DIR OUT_PREFIX EXT CN
  openssl req -newkey rsa:2048 -nodes -keyout "$2-key.pem" -out "$2.csr" -subj "/CN=$4" 2>/dev/null
  openssl x509 -req -in "$2.csr" -CA "$1/ca-cert.pem" -CAkey "$1/ca-key.pem" -CAcreateserial -days 2 \
    -extfile ext.cnf -extensions "$3" -out "$2-cert.pem" 2>/dev/null
}
make_ca server
make_cert server server/server server localhost
cp server/ca-cert.pem client/
make_cert server client/client client client
make_ca other
make_cert other other/client client intruder

X509=(--object "tls-creds-x509,id=tls0,dir=$TEST_DIR/server,endpoint=server" --tls-creds tls0)
start_server k.sock "$KILN_NBD" -f raw -t -k "$TEST_DIR/k.sock" "${X509[@]}" disk.raw
TLS_URI="nbds+unix:///?socket=$TEST_DIR/k.sock&tls-certificates=$TEST_DIR/client"
check "nbdinfo over X.509 TLS" bash -c "nbdinfo --json '$TLS_URI' | grep -q '\"TLS\": true'"
nbdcopy "$TLS_URI" tls-copy.raw
expect_equal "nbdcopy over X.509 TLS" "$(file_hash disk.raw)" "$(file_hash tls-copy.raw)"
expect_status "plaintext client refused" 1 nbdinfo "$(uri k.sock)"
check "plaintext refusal names TLS" bash -c "nbdinfo '$(uri k.sock)' 2>&1 | grep -qi tls"
expect_status "client certificate from another CA refused" 1 \
  nbdinfo "nbds+unix:///?socket=$TEST_DIR/k.sock&tls-certificates=$TEST_DIR/other"
mkdir -p nocert && cp server/ca-cert.pem nocert/
expect_status "client without certificate refused (verify-peer default on)" 1 \
  nbdinfo "nbds+unix:///?socket=$TEST_DIR/k.sock&tls-certificates=$TEST_DIR/nocert"
check "server survives refused clients" nbdinfo --size "$TLS_URI"
stop_servers

# verify-peer=off: any client with the CA may connect, no certificate needed.
start_server k.sock "$KILN_NBD" -f raw -t -k "$TEST_DIR/k.sock" \
  --object "tls-creds-x509,id=tls0,dir=$TEST_DIR/server,endpoint=server,verify-peer=off" --tls-creds tls0 disk.raw
check "verify-peer=off accepts a client without certificate" \
  nbdinfo --size "nbds+unix:///?socket=$TEST_DIR/k.sock&tls-certificates=$TEST_DIR/nocert"
stop_servers

# PSK.
mkdir -p psk
echo "alice:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" > psk/keys.psk
echo "alice:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff" > wrong.psk
echo "mallory:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" > unknown.psk
start_server k.sock "$KILN_NBD" -f raw -t -k "$TEST_DIR/k.sock" \
  --object "tls-creds-psk,id=tls0,dir=$TEST_DIR/psk,endpoint=server" --tls-creds tls0 disk.raw
PSK_URI="nbds+unix://alice@/?socket=$TEST_DIR/k.sock&tls-psk-file=$TEST_DIR/psk/keys.psk"
check "nbdinfo over PSK TLS" bash -c "nbdinfo --json '$PSK_URI' | grep -q '\"TLS\": true'"
nbdcopy "$PSK_URI" psk-copy.raw
expect_equal "nbdcopy over PSK" "$(file_hash disk.raw)" "$(file_hash psk-copy.raw)"
expect_status "wrong PSK refused" 1 nbdinfo "nbds+unix://alice@/?socket=$TEST_DIR/k.sock&tls-psk-file=$TEST_DIR/wrong.psk"
expect_status "unknown PSK identity refused" 1 nbdinfo "nbds+unix://mallory@/?socket=$TEST_DIR/k.sock&tls-psk-file=$TEST_DIR/unknown.psk"
expect_status "plaintext refused with PSK" 1 nbdinfo "$(uri k.sock)"
check "PSK server still serves" nbdinfo --size "$PSK_URI"
stop_servers

# --tls-authz with authz-simple: only the client certificate whose
# distinguished name matches gets in. The DN text is the one GnuTLS prints for
# qemu-nbd (the certificate's order, RFC 4514 escaping), and qemu-nbd is run
# with the same command line as the oracle; commas in the identity are doubled.
# A value with an escaped comma checks the escaping too.
mkdir -p laptop
cp server/ca-cert.pem laptop/
openssl req -newkey rsa:2048 -nodes -keyout laptop/client-key.pem -out laptop/client.csr \
  -subj "/C=GB/ST=London/O=Kiln Test\, Ltd/CN=laptop.example.com" 2>/dev/null
openssl x509 -req -in laptop/client.csr -CA server/ca-cert.pem -CAkey server/ca-key.pem -CAcreateserial -days 2 \
  -extfile ext.cnf -extensions client -out laptop/client-cert.pem 2>/dev/null
LAPTOP_DN='C=GB,,ST=London,,O=Kiln Test\,, Ltd,,CN=laptop.example.com'
for server in "$KILN_NBD" qemu-nbd; do
  name=$(basename "$server")
  start_server k.sock "$server" -f raw -t -k "$TEST_DIR/k.sock" "${X509[@]}" \
    --object "authz-simple,id=auth0,identity=$LAPTOP_DN" --tls-authz auth0 disk.raw
  check "$name: authorized DN connects" \
    nbdinfo --size "nbds+unix:///?socket=$TEST_DIR/k.sock&tls-certificates=$TEST_DIR/laptop"
  expect_status "$name: other DN from the same CA refused" 1 nbdinfo --size "$TLS_URI"
  check "$name: still serves after a refusal" \
    nbdinfo --size "nbds+unix:///?socket=$TEST_DIR/k.sock&tls-certificates=$TEST_DIR/laptop"
  stop_servers
done
start_server k.sock "$KILN_NBD" -f raw -t -k "$TEST_DIR/k.sock" "${X509[@]}" \
  --object "authz-simple,id=auth0,identity=CN=client" --tls-authz auth0 disk.raw
nbdcopy "$TLS_URI" authz-copy.raw
expect_equal "nbdcopy as the authorized client" "$(file_hash disk.raw)" "$(file_hash authz-copy.raw)"
expect_status "authz: laptop refused when only CN=client is allowed" 1 \
  nbdinfo --size "nbds+unix:///?socket=$TEST_DIR/k.sock&tls-certificates=$TEST_DIR/laptop"
stop_servers

# With PSK the identity is the PSK username. (qemu-nbd 7.2 accepts the same
# command line but does not check PSK usernames; kiln-nbd does.)
cp psk/keys.psk authz.psk
echo "bob:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff" >> authz.psk
mkdir -p psk2 && cp authz.psk psk2/keys.psk
start_server k.sock "$KILN_NBD" -f raw -t -k "$TEST_DIR/k.sock" \
  --object "tls-creds-psk,id=tls0,dir=$TEST_DIR/psk2,endpoint=server" --tls-creds tls0 \
  --object "authz-simple,id=auth0,identity=alice" --tls-authz auth0 disk.raw
check "PSK authz lets alice in" nbdinfo --size "nbds+unix://alice@/?socket=$TEST_DIR/k.sock&tls-psk-file=$TEST_DIR/authz.psk"
expect_status "PSK authz refuses bob" 1 nbdinfo --size "nbds+unix://bob@/?socket=$TEST_DIR/k.sock&tls-psk-file=$TEST_DIR/authz.psk"
check "PSK server still serves alice" nbdinfo --size "nbds+unix://alice@/?socket=$TEST_DIR/k.sock&tls-psk-file=$TEST_DIR/authz.psk"
stop_servers

# Bad authz command lines fail at start-up with one line.
expect_status "--tls-authz without --tls-creds" 1 "$KILN_NBD" -f raw -k "$TEST_DIR/x.sock" \
  --object "authz-simple,id=auth0,identity=CN=client" --tls-authz auth0 disk.raw
expect_status "unknown authz id" 1 "$KILN_NBD" -f raw -k "$TEST_DIR/x.sock" "${X509[@]}" --tls-authz nope disk.raw
expect_status "authz-simple without identity" 1 "$KILN_NBD" -f raw -k "$TEST_DIR/x.sock" "${X509[@]}" \
  --object "authz-simple,id=auth0" --tls-authz auth0 disk.raw
expect_status "authz with verify-peer=off" 1 "$KILN_NBD" -f raw -k "$TEST_DIR/x.sock" \
  --object "tls-creds-x509,id=tls0,dir=$TEST_DIR/server,endpoint=server,verify-peer=off" --tls-creds tls0 \
  --object "authz-simple,id=auth0,identity=CN=client" --tls-authz auth0 disk.raw
check "authz errors are one line naming the object" bash -c \
  "'$KILN_NBD' -f raw -k '$TEST_DIR/x.sock' ${X509[*]} --tls-authz nope disk.raw 2>&1 | grep -q \"^kiln-nbd: .*'nope'\$\""

# Bad credentials are reported at start-up.
expect_status "missing certificate directory" 1 "$KILN_NBD" -f raw -k "$TEST_DIR/x.sock" \
  --object "tls-creds-x509,id=tls0,dir=$TEST_DIR/nowhere,endpoint=server" --tls-creds tls0 disk.raw
expect_status "client endpoint refused" 1 "$KILN_NBD" -f raw -k "$TEST_DIR/x.sock" \
  --object "tls-creds-x509,id=tls0,dir=$TEST_DIR/server,endpoint=client" --tls-creds tls0 disk.raw
expect_status "unknown credentials id" 1 "$KILN_NBD" -f raw -k "$TEST_DIR/x.sock" --tls-creds nope disk.raw

finish
