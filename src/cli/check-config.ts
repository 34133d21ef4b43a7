// What the agent needs from the machine besides a valid config file, checked as the process
// that runs the checks (check-config --as-user runs them as the service's user): writable
// database, log and socket folders and snapstore destinations, the control device, the mapped
// disks. `serve` runs the same checks before it starts, so check-config and serve agree.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { AgentError } from '../core/errors';
import { configError, type Config } from '../config/config';
import { DEFAULT_BLKSNAP_CONTROL_DEVICE } from '../native/blksnap';
import { DEFAULT_CONTROL_DEVICE } from '../native/veeamsnap';

/** The directories the systemd unit creates for the service (RuntimeDirectory=, LogsDirectory=). */
export const SERVICE_DIRECTORIES = ['/run/coriolis-snapshot-agent', '/var/log/coriolis-snapshot-agent'];

export interface CheckReport {
  problems: AgentError[];
  /** Things worth knowing that are not problems. */
  notes: string[];
}

function identity(): string {
  return `${os.userInfo().username} (uid ${process.getuid!()})`;
}

function accessProblem(file: string, mode: number): string | null {
  try {
    fs.accessSync(file, mode);
    return null;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const want = mode & fs.constants.W_OK ? 'writable' : 'readable';
    if (code === 'EROFS') return `${file} is on a read-only filesystem`;
    if (code === 'ENOENT') return `${file} does not exist`;
    return `${file} is not ${want} by ${identity()}: ${(err as Error).message}`;
  }
}

function exists(file: string): boolean {
  try {
    fs.statSync(file);
    return true;
  } catch {
    return false;
  }
}

/** A file the agent creates or rewrites: its folder must be writable, or creatable by the agent or the unit. */
function checkFileToWrite(report: CheckReport, key: string, file: string, config: Config): void {
  const fail = (problem: string): void => {
    report.problems.push(configError(config.file, key, problem));
  };
  const dir = path.dirname(file);
  const service = SERVICE_DIRECTORIES.find((d) => dir === d || dir.startsWith(`${d}/`));
  if (service === undefined) {
    // The unit's read-only system (ProtectSystem=strict) would refuse it: an error only there.
    report.notes.push(`${key}: ${dir} is outside ${SERVICE_DIRECTORIES.join(' and ')}: under the systemd unit, add it to ReadWritePaths=`);
  }
  if (exists(dir)) {
    const problem = accessProblem(dir, fs.constants.W_OK | fs.constants.X_OK);
    if (problem !== null) return fail(problem);
    if (exists(file)) {
      const fileProblem = accessProblem(file, fs.constants.R_OK | fs.constants.W_OK);
      if (fileProblem !== null) fail(fileProblem);
    }
    return;
  }
  if (service !== undefined) {
    report.notes.push(`${key}: ${service} does not exist yet: the systemd unit creates it for the service`);
    return;
  }
  let ancestor = path.dirname(dir);
  while (!exists(ancestor)) ancestor = path.dirname(ancestor);
  const problem = accessProblem(ancestor, fs.constants.W_OK | fs.constants.X_OK);
  if (problem !== null) fail(`cannot create ${dir}: ${problem}`);
}

export function checkEnvironment(config: Config): CheckReport {
  const report: CheckReport = { problems: [], notes: [] };
  const fail = (key: string, problem: string | null): void => {
    if (problem !== null) report.problems.push(configError(config.file, key, problem));
  };
  checkFileToWrite(report, 'database_file', config.databaseFile, config);
  if (config.logFile !== null) checkFileToWrite(report, 'log_file', config.logFile, config);
  if (config.nbd.unixSocket !== null) checkFileToWrite(report, 'nbd.unix_socket', config.nbd.unixSocket, config);
  config.snapstoreDestinations.forEach((destination, index) => {
    fail(`snapstore_destinations[${index}]`, accessProblem(destination, fs.constants.W_OK | fs.constants.X_OK));
  });
  if (config.engine === 'simulated') return report;
  // The control device of each module the engine may run; with auto, the ones that are loaded.
  const controls = { veeamsnap: DEFAULT_CONTROL_DEVICE, blksnap: DEFAULT_BLKSNAP_CONTROL_DEVICE } as const;
  const candidates = config.engine === 'auto'
    ? Object.values(controls).filter(exists)
    : [controls[config.engine]];
  if (candidates.length === 0) {
    report.notes.push(`engine: no snapshot module is loaded now (neither ${controls.veeamsnap} nor ${controls.blksnap}); auto will try modprobe at start`);
  }
  for (const control of candidates) {
    const problem = accessProblem(control, fs.constants.R_OK | fs.constants.W_OK);
    fail('engine', problem !== null && !exists(control)
      ? `${control} does not exist: is the ${config.engine} module loaded? (see the README, "Kernel module")` : problem);
  }
  config.snapstoreMappings.forEach((mapping, index) => {
    const device = `/dev/${mapping.device}`;
    fail(`snapstore_mapping[${index}].device`, exists(device) ? accessProblem(device, fs.constants.R_OK) : `no disk ${mapping.device} on this machine (${device} does not exist)`);
  });
  return report;
}
