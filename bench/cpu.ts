// CPU accounting for the benchmarks: how busy the whole machine was during a run, and how much
// CPU time a server spent, so a ratio can be read as "bound by the CPU" or "bound by the disk".
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';

const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }));

/** Busy and total CPU seconds of the whole machine so far, all CPUs together (/proc/stat). */
export function machineCpuSeconds(): { busy: number; total: number } {
  const fields = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, idle, iowait, irq, softirq, steal] = fields as [number, number, number, number, number, number, number, number];
  const busy = user + nice + system + irq + softirq + steal;
  return { busy: busy / CLOCK_TICKS, total: (busy + idle + iowait) / CLOCK_TICKS };
}

/** CPU seconds used so far by the processes `pids`, all their threads. */
export function processCpuSeconds(pids: number[]): number {
  return pids.reduce((sum, pid) => {
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th overall.
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return sum + (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  }, 0);
}

/** CPU seconds this process has used so far, all threads. */
export function ownCpuSeconds(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
}

export interface CpuUse {
  /** Share of the machine's CPU time that was busy, any process. */
  machineBusy: number;
  /** CPU seconds the server used; NaN without a server. */
  serverSeconds: number;
  /** CPU seconds the rest of the machine used: the client, the kernel, anything else. */
  otherSeconds: number;
}

/** Runs `action` and reports the CPU it took, the server's measured by `serverCpu`. */
export async function withCpuUse<T>(action: () => Promise<T>, serverCpu: (() => number) | null): Promise<{ result: T; cpu: CpuUse }> {
  const machineBefore = machineCpuSeconds();
  const serverBefore = serverCpu?.() ?? 0;
  const result = await action();
  const machineAfter = machineCpuSeconds();
  const serverSeconds = serverCpu === null ? NaN : serverCpu() - serverBefore;
  const busy = machineAfter.busy - machineBefore.busy;
  return {
    result,
    cpu: {
      machineBusy: busy / (machineAfter.total - machineBefore.total),
      serverSeconds,
      otherSeconds: busy - (Number.isNaN(serverSeconds) ? 0 : serverSeconds),
    },
  };
}
