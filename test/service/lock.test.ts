// One agent per state: a second serve or demo on the same database, started while the first
// is creating a snapshot, must leave that snapshot alone and say who holds the state.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { startAgent } from '../../src/agent/start';
import { loadConfig } from '../../src/config/config';
import { silentLogger } from '../../src/core/log';
import { lockState } from '../../src/agent/state-lock';
import { MAIN, scratch } from './helpers';

/** Rows of the snapshots table, read beside the running agent. */
function snapshotStates(databaseFile: string): string[] {
  const db = new Database(databaseFile, { readonly: true });
  try {
    return (db.prepare('SELECT state FROM snapshots').all() as Array<{ state: string }>).map((row) => row.state);
  } finally {
    db.close();
  }
}

describe('one agent per state', () => {
  test('a second serve or demo during a create is refused before it touches the snapshot', { timeout: 180_000 }, async (t) => {
    const s = await scratch();
    t.after(() => s.remove());
    const config = loadConfig(s.configFile);
    const agent = await startAgent(config, silentLogger());
    t.after(() => agent.stop());

    const creating = agent.service.createSnapshot(['disk0', 'disk1']);
    // The rows are written before the first await; poll until they are visible, then run the
    // second agents with this event loop frozen (spawnSync), i.e. in the middle of the create.
    while (!snapshotStates(config.databaseFile).includes('creating')) await new Promise((resolve) => setImmediate(resolve));
    const second = spawnSync(process.execPath, [MAIN, 'serve', '--config', s.configFile], { encoding: 'utf8', timeout: 60_000 });
    // The demo on the same directory layout: its own config, but this database.
    const demoDir = path.dirname(config.databaseFile);
    const demo = spawnSync(process.execPath, [MAIN, 'demo', '--dir', demoDir, '--api-port', '0', '--nbd-port', '0'], { encoding: 'utf8', timeout: 60_000 });
    assert.deepEqual(snapshotStates(config.databaseFile), ['creating'], 'still being created, by the first agent');

    const message = `database_file: ${config.databaseFile} is in use by another agent (pid ${process.pid})`;
    assert.equal(second.status, 1, second.stderr);
    // Log records (JSON) aside, one line says why.
    const lines = second.stderr.split('\n').filter((line) => line !== '' && !line.startsWith('{'));
    assert.deepEqual(lines, [`coriolis-snapshot-agent: ${message}: stop it first, or give this one its own database_file`]);
    assert.equal(demo.status, 1, demo.stderr);
    assert.match(demo.stderr, new RegExp(`^coriolis-snapshot-agent: database_file: ${demoDir}/agent.db is in use by another agent \\(pid ${process.pid}\\)`));

    const snapshot = await creating;
    assert.equal(snapshot.state.status, 'ok');
    const image = await agent.service.openImage(snapshot.id, 'disk0');
    await image.close();
    assert.deepEqual(snapshotStates(config.databaseFile), ['ok']);
    await agent.service.deleteSnapshot(snapshot.id);
  });

  test('the lock is released on stop and when its holder is killed', { timeout: 60_000 }, async (t) => {
    const s = await scratch();
    t.after(() => s.remove());
    const database = path.join(s.dir, 'state', 'agent.db');
    const held = lockState(database);
    assert.throws(() => lockState(database), new RegExp(`in use by another agent \\(pid ${process.pid}\\)`));
    held.release();
    lockState(database).release();

    // A holder killed with SIGKILL leaves its pid in the file but no lock.
    const holder = spawn(process.execPath, ['-e', `require(${JSON.stringify(path.resolve(__dirname, '../../src/agent/state-lock.js'))}).lockState(${JSON.stringify(database)}); console.log('locked'); setInterval(() => {}, 1000);`], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise((resolve) => holder.stdout.once('data', resolve));
    assert.throws(() => lockState(database), new RegExp(`pid ${holder.pid}\\)`));
    holder.kill('SIGKILL');
    await new Promise((resolve) => holder.once('exit', resolve));
    assert.equal(fs.readFileSync(`${database}.lock`, 'utf8'), `${holder.pid}\n`);
    lockState(database).release();
  });
});
