// A short-lived process driving the simulated engine for the engine crash tests:
// `snapshot` (new snapstores, then one snapshot of both disks; prints its handle) or
// `destroy HANDLE`. With CSA_FAULT_POINT set it dies by SIGKILL at that point inside the engine.
import { snapstoresFor, startEngine } from './model';

async function main(): Promise<void> {
  const [dir, action, handle] = process.argv.slice(2);
  const engine = await startEngine(dir);
  const devices = engine.disks().map((d) => d.device);
  if (action === 'snapshot') {
    await snapstoresFor(engine, devices);
    process.stdout.write(`${(await engine.createSnapshot(devices)).handle}\n`);
  } else if (action === 'destroy') {
    await engine.destroySnapshot(handle);
  } else {
    throw new Error(`unknown action ${action}`);
  }
  await engine.close();
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack}\n`);
  process.exit(1);
});
