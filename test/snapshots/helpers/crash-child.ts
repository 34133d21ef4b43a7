// A short-lived agent for the crash tests: `create`, `delete ID`, `changes ID [GEN NUMBER]`
// (of disk0, with its own numbers) or `check` on the lifecycle environment in DIR. With
// CSA_FAULT_POINT set it dies by SIGKILL at that point; `check` starts like a restarted agent
// (reconciling) and prints what is left as one JSON line.
import { lifecycleEnv, MiB, pattern, simulatedMachine, snapstoreFiles } from './env';

async function main(): Promise<void> {
  const [dir, action, id, generationId, number] = process.argv.slice(2);
  const env = await lifecycleEnv({ machine: await simulatedMachine(dir) });
  if (action === 'create') {
    const snapshot = await env.manager.createSnapshot(['disk0', 'disk1']);
    process.stdout.write(`${snapshot.id}\n`);
  } else if (action === 'delete') {
    await env.manager.deleteSnapshot(id);
  } else if (action === 'changes') {
    const volume = (await env.manager.getSnapshot(id)).volumes.find((v) => v.trackedDiskId === 'disk0')!;
    const changes = await env.manager.changes(id, 'disk0', {
      previousGenerationId: generationId, previousNumber: number === undefined ? undefined : Number(number),
    });
    process.stdout.write(`${JSON.stringify({ generationId: volume.generationId, snapshotNumber: volume.snapshotNumber, ...changes })}\n`);
  } else {
    const snapshots = await env.manager.listSnapshots();
    const intact: boolean[] = [];
    for (const snapshot of snapshots) {
      for (const [index, volume] of snapshot.volumes.entries()) {
        const reader = await env.exports.openByVolume(snapshot.id, volume.trackedDiskId);
        intact.push(Buffer.from(await reader.read(0, 4 * MiB)).equals(pattern(4 * MiB, index + 1)));
        await reader.close();
      }
    }
    process.stdout.write(`${JSON.stringify({
      rows: env.state.snapshots.list().map((s) => s.state),
      snapshots: snapshots.map((s) => ({ id: s.id, state: s.state.status, volumes: s.volumes.length })),
      intact,
      snapstoreRows: env.state.snapstores.list().length,
      fileRows: env.state.snapstores.list().flatMap((s) => env.state.files.of(s.id)).length,
      files: snapstoreFiles(env),
      engineSnapshots: (await env.engine.listSnapshots()).length,
      images: (await env.engine.listImages()).length,
    })}\n`);
  }
  await env.manager.stop();
  await env.engine.close();
  env.state.close();
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack}\n`);
  process.exit(1);
});
