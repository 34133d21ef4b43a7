// What a pull tells while it runs: on a terminal one redrawn line (a bar, bytes, rate, ETA); to
// anything else one JSON line per second (and at the end of each phase) on its stream.

export type Phase = 'copy' | 'verify' | 'repair';

export interface Progress {
  phase: Phase;
  mode: string;
  /** Bytes of the phase's work done and to do: copied or zeroed (copy, repair), hashed (verify). */
  doneBytes: number;
  totalBytes: number;
  /** Image bytes received from the agent so far, in all phases. */
  fetchedBytes: number;
}

export interface ProgressSink {
  /** `last`: the phase is over (always shown). */
  report(progress: Progress, last: boolean): void;
  /** Before the summary: the terminal line is cleared. */
  end(): void;
}

/** Measures rate and ETA since the start of the current phase. */
class Clock {
  private phase = '';
  private startMs = 0;
  private startBytes = 0;

  measure(progress: Progress, now: number): { rate: number; eta: number | null } {
    if (progress.phase !== this.phase) {
      this.phase = progress.phase;
      this.startMs = now;
      this.startBytes = progress.doneBytes;
    }
    const seconds = (now - this.startMs) / 1000;
    const rate = seconds > 0 ? (progress.doneBytes - this.startBytes) / seconds : 0;
    const eta = rate > 0 ? Math.max(0, (progress.totalBytes - progress.doneBytes) / rate) : null;
    return { rate, eta };
  }
}

/** One JSON line at most every `intervalMs`, and the last of each phase. */
export function jsonProgress(stream: NodeJS.WritableStream, intervalMs = 1000): ProgressSink {
  const clock = new Clock();
  let lastMs = -Infinity;
  return {
    report(progress, last) {
      const now = Date.now();
      const { rate, eta } = clock.measure(progress, now);
      if (!last && now - lastMs < intervalMs) return;
      lastMs = now;
      stream.write(`${JSON.stringify({
        type: 'progress', phase: progress.phase, mode: progress.mode, done_bytes: progress.doneBytes, total_bytes: progress.totalBytes,
        fetched_bytes: progress.fetchedBytes, bytes_per_second: Math.round(rate), eta_seconds: eta === null ? null : Math.round(eta),
      })}\n`);
    },
    end() {},
  };
}

const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

function formatDuration(seconds: number | null): string {
  if (seconds === null) return '--:--';
  const s = Math.round(seconds);
  const hours = Math.floor(s / 3600);
  const mm = String(Math.floor((s % 3600) / 60)).padStart(2, '0');
  const ss = String(s % 60).padStart(2, '0');
  return hours > 0 ? `${hours}:${mm}:${ss}` : `${mm}:${ss}`;
}

/** The terminal's line: `copy (full) [#####.....]  45%  115.2 MiB / 256.0 MiB  35.1 MiB/s  ETA 00:04`, redrawn at most 5 times a second. */
export function barProgress(stream: NodeJS.WriteStream, width = 30): ProgressSink {
  const clock = new Clock();
  let lastMs = -Infinity;
  let drawn = false;
  return {
    report(progress, last) {
      const now = Date.now();
      const { rate, eta } = clock.measure(progress, now);
      if (!last && now - lastMs < 200) return;
      lastMs = now;
      const fraction = progress.totalBytes > 0 ? Math.min(1, progress.doneBytes / progress.totalBytes) : 1;
      const filled = Math.round(fraction * width);
      const line = `${progress.phase} (${progress.mode}) [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${String(Math.floor(fraction * 100)).padStart(3)}%  `
        + `${formatBytes(progress.doneBytes)} / ${formatBytes(progress.totalBytes)}  ${formatBytes(rate)}/s  ETA ${formatDuration(eta)}`;
      const columns = stream.columns ?? 100;
      stream.write(`\r${line.slice(0, columns - 1)}\x1b[K`);
      drawn = true;
    },
    end() {
      if (drawn) stream.write('\r\x1b[K');
    },
  };
}

export const silentProgress: ProgressSink = { report() {}, end() {} };
