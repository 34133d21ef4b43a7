// Test certificates made with openssl: a CA, a server certificate and a client certificate, in
// the file names the agent's gen-certs writes.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export interface TestCerts {
  dir: string;
  caCert: string;
  caKey: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** Issues `<name>-cert.pem` / `<name>-key.pem` signed by the CA in `dir`, with X.509 extensions. */
function issue(dir: string, name: string, subject: string, extensions: string): void {
  fs.writeFileSync(path.join(dir, `${name}.ext`), extensions);
  openssl(['req', ...EC_KEY, '-keyout', `${name}-key.pem`, '-subj', subject, '-out', `${name}.csr`], dir);
  openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca-cert.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial',
    '-days', '2', '-out', `${name}-cert.pem`, '-extfile', `${name}.ext`], dir);
}

export function makeTestCerts(dir: string): TestCerts {
  openssl(['req', '-x509', ...EC_KEY, '-days', '2', '-subj', '/CN=test CA', '-keyout', 'ca-key.pem', '-out', 'ca-cert.pem'], dir);
  issue(dir, 'server', '/CN=localhost', 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\n');
  issue(dir, 'client', '/CN=test client', 'extendedKeyUsage=clientAuth\n');
  const file = (name: string): string => path.join(dir, name);
  return {
    dir,
    caCert: file('ca-cert.pem'),
    caKey: file('ca-key.pem'),
    serverCert: file('server-cert.pem'),
    serverKey: file('server-key.pem'),
    clientCert: file('client-cert.pem'),
    clientKey: file('client-key.pem'),
  };
}

export interface ClientCerts {
  /** A certificates directory as libnbd and qemu read it: ca-cert.pem, client-cert.pem, client-key.pem. */
  dir: string;
  cert: string;
  key: string;
}

/** Another client certificate from the CA of `certs`, with its own subject (openssl -subj form), in a directory of its own. */
export function makeClientCerts(certs: TestCerts, name: string, subject: string): ClientCerts {
  issue(certs.dir, name, subject, 'extendedKeyUsage=clientAuth\n');
  const dir = path.join(certs.dir, name);
  fs.mkdirSync(dir);
  fs.copyFileSync(certs.caCert, path.join(dir, 'ca-cert.pem'));
  fs.renameSync(path.join(certs.dir, `${name}-cert.pem`), path.join(dir, 'client-cert.pem'));
  fs.renameSync(path.join(certs.dir, `${name}-key.pem`), path.join(dir, 'client-key.pem'));
  return { dir, cert: path.join(dir, 'client-cert.pem'), key: path.join(dir, 'client-key.pem') };
}
