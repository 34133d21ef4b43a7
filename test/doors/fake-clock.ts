// A clock that moves only when a test moves it, with the timers scheduled on it.
import type { Clock } from '../../src/doors/limits';

interface Timer {
  at: number;
  callback: () => void;
}

export class FakeClock implements Clock {
  private time = 0;
  private timers: Timer[] = [];

  now(): number {
    return this.time;
  }

  schedule(callback: () => void, ms: number): () => void {
    const timer = { at: this.time + ms, callback };
    this.timers.push(timer);
    return () => {
      this.timers = this.timers.filter((t) => t !== timer);
    };
  }

  get pendingTimers(): number {
    return this.timers.length;
  }

  /** Moves time forward by `ms`, running the timers that fall due on the way, in order. */
  advance(ms: number): void {
    const end = this.time + ms;
    for (let next = this.earliest(); next !== undefined && next.at <= end; next = this.earliest()) {
      this.fire(next);
    }
    this.time = end;
  }

  /** Jumps to the next timer and runs it, `lateMs` after it was due (a busy event loop); false when there is none. */
  runNext(lateMs = 0): boolean {
    const next = this.earliest();
    if (next === undefined) return false;
    this.time = Math.max(this.time, next.at + lateMs);
    this.fire(next);
    return true;
  }

  private earliest(): Timer | undefined {
    return this.timers.reduce<Timer | undefined>((soonest, t) => (soonest === undefined || t.at < soonest.at ? t : soonest), undefined);
  }

  private fire(timer: Timer): void {
    this.timers = this.timers.filter((t) => t !== timer);
    this.time = Math.max(this.time, timer.at);
    timer.callback();
  }
}
