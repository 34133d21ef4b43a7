// Who is at the other end of a TLS connection, and whether the allow-list lets them in.
//
// An allow-list entry names one client certificate, either by subject ("CN=backup, O=Coriolis",
// attributes in any order, all of them) or by SHA-256 fingerprint ("sha256:AB:CD:..." or 64 hex
// digits). An empty list admits every certificate the CA signed, as the original agent did.
// Every door that serves disk data (REST, NBD) asks the same ClientAllowList.
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';

export interface ClientIdentity {
  /** "CN=test client, O=Org": the certificate's attributes in their order, RFC 4514 style. */
  subject: string;
  /** Upper-case hex pairs joined by colons, as openssl prints them. */
  fingerprint256: string;
}

export type ClientMatcher =
  | { kind: 'fingerprint'; fingerprint: string }
  | { kind: 'subject'; attributes: string[] };

const FINGERPRINT_HEX = /^[0-9a-f]{64}$/;

/** "type=value" pairs, split on unescaped commas (or slashes, openssl's -subj style). */
function subjectAttributes(subject: string): string[] | undefined {
  const separator = subject.startsWith('/') ? '/' : ',';
  const parts: string[] = [];
  let current = '';
  for (let i = 0; i < subject.length; i++) {
    const char = subject[i];
    if (char === '\\' && i + 1 < subject.length) {
      current += subject[++i];
    } else if (char === separator) {
      parts.push(current);
      current = '';
    } else {
      current += char;
    }
  }
  parts.push(current);
  const attributes = parts.map((part) => part.trim()).filter((part, index) => !(separator === '/' && index === 0 && part === ''));
  const normalised: string[] = [];
  for (const attribute of attributes) {
    const equals = attribute.indexOf('=');
    if (equals <= 0) return undefined;
    normalised.push(`${attribute.slice(0, equals).trim().toUpperCase()}=${attribute.slice(equals + 1).trim()}`);
  }
  return normalised.sort();
}

/** Parses one allow-list entry; throws an Error saying what is wrong with it. */
export function parseClientMatcher(entry: string): ClientMatcher {
  const trimmed = entry.trim();
  const hex = trimmed.replace(/^sha256:/i, '').replace(/:/g, '').toLowerCase();
  if (/^sha256:/i.test(trimmed) || FINGERPRINT_HEX.test(hex)) {
    if (!FINGERPRINT_HEX.test(hex)) throw new Error(`${JSON.stringify(entry)} is not a SHA-256 fingerprint (64 hex digits, colons allowed)`);
    return { kind: 'fingerprint', fingerprint: hex };
  }
  const attributes = subjectAttributes(trimmed);
  if (attributes === undefined || trimmed === '') {
    throw new Error(`${JSON.stringify(entry)} is neither a certificate subject such as "CN=client" nor a fingerprint "sha256:AB:CD:..."`);
  }
  return { kind: 'subject', attributes };
}

export function matchesClient(matcher: ClientMatcher, identity: ClientIdentity): boolean {
  if (matcher.kind === 'fingerprint') return identity.fingerprint256.replace(/:/g, '').toLowerCase() === matcher.fingerprint;
  const actual = subjectAttributes(identity.subject);
  return actual !== undefined && actual.length === matcher.attributes.length && actual.every((value, index) => value === matcher.attributes[index]);
}

/** One door's allow-list; throws on a malformed entry, naming it. */
export class ClientAllowList {
  private readonly matchers: ClientMatcher[];

  constructor(entries: readonly string[]) {
    this.matchers = entries.map(parseClientMatcher);
  }

  /** False for an empty list, which admits every certificate the CA signed. */
  get restricts(): boolean {
    return this.matchers.length > 0;
  }

  /** A connection without a client certificate is admitted only where nothing is restricted. */
  admits(identity: ClientIdentity | null): boolean {
    if (!this.restricts) return true;
    return identity !== null && this.matchers.some((matcher) => matchesClient(matcher, identity));
  }
}

/** What a refused client is told: its own certificate, nothing about the list. */
export function notAllowedMessage(identity: ClientIdentity | null): string {
  return `client certificate ${identity?.subject ?? ''} (sha256 ${identity?.fingerprint256 ?? ''}) is not allowed`;
}

// Parsing the peer certificate once per connection, not once per request.
const identities = new WeakMap<Socket, ClientIdentity | null>();

/** The verified client certificate of a TLS connection, null without one (or on plain TCP). */
export function clientIdentity(socket: Socket): ClientIdentity | null {
  const known = identities.get(socket);
  if (known !== undefined) return known;
  const certificate = socket instanceof TLSSocket ? socket.getPeerX509Certificate() : undefined;
  const identity = certificate === undefined
    ? null
    : { subject: certificate.subject.split('\n').join(', '), fingerprint256: certificate.fingerprint256 };
  identities.set(socket, identity);
  return identity;
}
