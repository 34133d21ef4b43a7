// Run as a process of its own: a client breaks the handshake with bytes the server never reads,
// leaves, and the server is closed. Prints "closed" once close() resolves; if the server's side
// of the socket never noticed the client leaving, nothing keeps the process alive and it ends
// without printing it.
import { Option } from '../../../src/nbd/wire';
import { RawClient } from './raw-client';
import { makeFixture, removeFixture, startServer } from './server';

async function main(): Promise<void> {
  const fixture = makeFixture();
  const { server, port } = await startServer(fixture);
  const client = await RawClient.connect(port);
  await client.start();
  // STARTTLS with more behind it before its reply: the server closes, the LIST stays unread.
  client.sendOption(Option.STARTTLS);
  client.sendOption(Option.LIST);
  await client.untilClosed();
  client.socket.end();
  await server.close();
  removeFixture(fixture);
  process.stdout.write('closed\n');
}

void main();
