import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isLoopbackAddress } from '../../src/doors/tls';

describe('loopback addresses', () => {
  it('are 127.0.0.0/8, its IPv4-mapped form and ::1 in any spelling', () => {
    for (const address of ['127.0.0.1', '127.1.2.3', '::1', '0:0:0:0:0:0:0:1', '0::1', '::ffff:127.0.0.1', '::FFFF:127.9.9.9']) {
      assert.equal(isLoopbackAddress(address), true, address);
    }
  });

  it('are nothing else', () => {
    for (const address of ['0.0.0.0', '::', '10.0.0.1', '128.0.0.1', '::2', '1::1', '::ffff:10.0.0.1', 'localhost', '']) {
      assert.equal(isLoopbackAddress(address), false, address);
    }
  });
});
