// TLS for NBD: the in-session upgrade after NBD_OPT_STARTTLS, with the same server options as
// the REST API (doors/tls.ts).
import type net from 'node:net';
import tls from 'node:tls';
import { serverTlsOptions, type TlsMaterial } from '../doors/tls';

/**
 * Runs the server side of the TLS handshake over `socket` and resolves with the encrypted
 * socket once the client's certificate has been verified against the CA. Rejects (and destroys
 * the socket) when the handshake fails or the client presents no valid certificate.
 *
 * The socket is handed to a tls.Server that never listens: only its connection handling checks
 * the client certificate (a bare TLSSocket completes the handshake whatever the client sent).
 */
export function upgradeToTls(socket: net.Socket, material: TlsMaterial): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const server = tls.createServer(serverTlsOptions(material));
    server.once('secureConnection', (secure: tls.TLSSocket) => {
      server.removeAllListeners('tlsClientError');
      resolve(secure);
    });
    server.once('tlsClientError', (err: Error, secure: tls.TLSSocket) => {
      server.removeAllListeners('secureConnection');
      // A refused certificate shows as a hang-up; the reason is on the socket.
      const certificate = secure.authorizationError ? ` (client certificate: ${String(secure.authorizationError)})` : '';
      secure.destroy();
      socket.destroy();
      reject(new Error(`TLS handshake failed: ${err.message}${certificate}`, { cause: err }));
    });
    server.emit('connection', socket);
  });
}
