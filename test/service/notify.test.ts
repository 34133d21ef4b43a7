// sd_notify for Type=notify: datagrams to $NOTIFY_SOCKET (a path or an abstract '@' name),
// READY=1 only once both servers listen, STOPPING=1 when a stop begins. The receiver is a
// small python3 program: Node cannot receive AF_UNIX datagrams.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { silentLogger } from '../../src/core/log';
import { notifySocket } from '../../src/native/process';
import { notifySystemd } from '../../src/agent/systemd';
import { scratch, serve } from './helpers';

const RECEIVER = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
name = sys.argv[1]
s.bind('\\0' + name[1:] if name.startswith('@') else name)
print('bound', flush=True)
while True:
    print(s.recv(4096).decode(), flush=True)
`;

interface Receiver {
  /** Resolves with the next datagram. */
  next(): Promise<string>;
  close(): void;
}

async function receiver(name: string): Promise<Receiver> {
  const child: ChildProcess = spawn('python3', ['-c', RECEIVER, name], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: string[] = [];
  const waiting: Array<(line: string) => void> = [];
  let buffered = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    buffered += chunk.toString();
    let end;
    while ((end = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, end);
      buffered = buffered.slice(end + 1);
      const waiter = waiting.shift();
      if (waiter) waiter(line);
      else lines.push(line);
    }
  });
  const next = (): Promise<string> => (lines.length > 0 ? Promise.resolve(lines.shift()!) : new Promise((resolve) => waiting.push(resolve)));
  assert.equal(await next(), 'bound');
  return { next, close: () => child.kill() };
}

describe('sd_notify', () => {
  test('a datagram reaches a socket by path and in the abstract namespace', { timeout: 30_000 }, async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-notify-'));
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
    for (const name of [path.join(dir, 'notify.sock'), `@csa-notify-${crypto.randomBytes(6).toString('hex')}`]) {
      const r = await receiver(name);
      try {
        notifySocket(name, 'READY=1');
        assert.equal(await r.next(), 'READY=1', name);
        notifySystemd('STOPPING=1', silentLogger(), { NOTIFY_SOCKET: name });
        assert.equal(await r.next(), 'STOPPING=1', name);
      } finally {
        r.close();
      }
    }
  });

  test('a missing socket is an error for the facade, a logged warning for the agent, nothing when unset', () => {
    assert.throws(() => notifySocket('/nonexistent/notify.sock', 'READY=1'), { code: 'ENOENT', syscall: 'sendto' });
    assert.throws(() => notifySocket('', 'READY=1'), TypeError);
    notifySystemd('READY=1', silentLogger(), { NOTIFY_SOCKET: '/nonexistent/notify.sock' });
    notifySystemd('READY=1', silentLogger(), {});
  });

  test('serve says READY=1 once both ports accept connections, and STOPPING=1 on SIGTERM', { timeout: 120_000 }, async (t) => {
    const s = await scratch();
    t.after(() => s.remove());
    const name = `@csa-notify-${crypto.randomBytes(6).toString('hex')}`;
    const r = await receiver(name);
    t.after(() => r.close());
    const agent = serve(s.configFile, { NOTIFY_SOCKET: name });
    t.after(() => agent.child.kill('SIGKILL'));
    assert.equal(await r.next(), 'READY=1');
    for (const port of [s.apiPort, s.nbdPort]) {
      await new Promise<void>((resolve, reject) => {
        const socket = net.connect(port, '127.0.0.1', () => {
          socket.destroy();
          resolve();
        }).once('error', reject);
      });
    }
    agent.child.kill('SIGTERM');
    assert.equal(await r.next(), 'STOPPING=1');
    assert.equal(await agent.exited, 0, agent.output());
  });
});
