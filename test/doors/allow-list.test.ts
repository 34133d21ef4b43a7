// Allow-list entries against certificate identities: a subject matches only when every
// attribute agrees both ways, in any order; a fingerprint only itself.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ClientAllowList, matchesClient, notAllowedMessage, parseClientMatcher, type ClientIdentity } from '../../src/doors/allow-list';

const FINGERPRINT = 'AB:'.repeat(31) + 'CD';
const identity = (subject: string): ClientIdentity => ({ subject, fingerprint256: FINGERPRINT });
const matches = (entry: string, subject: string): boolean => matchesClient(parseClientMatcher(entry), identity(subject));

describe('allow-list entries', () => {
  test('an entry naming more attributes than the certificate has does not match it', () => {
    assert.equal(matches('CN=test client, O=Coriolis', 'CN=test client'), false);
    assert.equal(matches('/CN=test client/O=Coriolis', 'CN=test client'), false);
  });

  test('an entry naming fewer attributes than the certificate has does not match it', () => {
    assert.equal(matches('CN=test client', 'CN=test client, O=Coriolis'), false);
  });

  test('the same attributes match in any order and either spelling', () => {
    assert.equal(matches('CN=test client, O=Coriolis', 'O=Coriolis, CN=test client'), true);
    assert.equal(matches('/O=Coriolis/CN=test client', 'CN=test client, O=Coriolis'), true);
  });

  test('a repeated attribute counts: CN=a, CN=a is not CN=a', () => {
    assert.equal(matches('CN=a, CN=a', 'CN=a'), false);
    assert.equal(matches('CN=a', 'CN=a, CN=a'), false);
  });

  test('values are compared exactly', () => {
    assert.equal(matches('CN=Test Client', 'CN=test client'), false);
    assert.equal(matches('CN=test', 'CN=test client'), false);
  });
});

describe('ClientAllowList', () => {
  test('an empty list restricts nothing', () => {
    const open = new ClientAllowList([]);
    assert.equal(open.restricts, false);
    assert.equal(open.admits(identity('CN=anyone')), true);
  });

  test('a list admits its entries only, and never a connection without a certificate', () => {
    const list = new ClientAllowList(['CN=backup', `sha256:${'00:'.repeat(31)}00`]);
    assert.equal(list.restricts, true);
    assert.equal(list.admits(identity('CN=backup')), true);
    assert.equal(list.admits({ subject: 'CN=other', fingerprint256: `${'00:'.repeat(31)}00` }), true);
    assert.equal(list.admits(identity('CN=other')), false);
    assert.equal(list.admits(null), false);
  });

  test('a malformed entry is refused when the list is made', () => {
    assert.throws(() => new ClientAllowList(['CN=backup', 'nobody']), /"nobody" is neither a certificate subject/);
  });

  test('the refusal names the client\'s own certificate, not the list', () => {
    assert.equal(notAllowedMessage(identity('CN=x')), `client certificate CN=x (sha256 ${FINGERPRINT}) is not allowed`);
  });
});
