// Read-rate limits, so that copying a snapshot does not starve the machine's own workload (the
// agent runs on the production server being migrated). One budget for the whole agent, shared by
// every HTTP download and every NBD connection, and optionally one for each connection. Both
// doors hand their image reader to throttle(): every read then waits for its bytes first, before
// it takes a buffer or touches the disk.
//
// Each budget is a token bucket: bytes accrue at the rate, up to a burst of a tenth of a second's
// worth (at least 1 MiB). A read is granted whenever the bucket is not in debt, and takes all its
// bytes: a 32 MiB NBD read under a 1 MiB/s limit goes through, and the next read waits about 31 s.
// The burst caps only what accrues while no read waits: while reads wait, time is credited in
// full, so a timer that fires late (a busy event loop) costs no throughput. Waiting reads are
// granted in start-time fair queueing order, by the bytes each connection was granted before, so
// a connection with many reads queued (an NBD client keeps dozens in flight) cannot crowd out one
// with a few (an HTTP download).
// A client that goes away withdraws its waiting reads: they take nothing from any budget. Ending
// its side of the connection counts: Node's HTTP server then drops the request anyway, and an NBD
// client that means to wait for its replies says NBD_CMD_DISC instead.
import { guardReads, type ImageReader } from '../core/image';
import { cancelled, type AgentError } from '../core/errors';

/** Milliseconds on a monotonic clock, and timers on it; tests drive a fake one. */
export interface Clock {
  now(): number;
  /** Runs `callback` after `ms`; the returned function cancels it. */
  schedule(callback: () => void, ms: number): () => void;
}

export const SYSTEM_CLOCK: Clock = {
  now: () => performance.now(),
  schedule: (callback, ms) => {
    const timer = setTimeout(callback, ms);
    return () => clearTimeout(timer);
  },
};

const BURST_SECONDS = 0.1;
const MIN_BURST = 1024 * 1024;

/** A read that was waiting for its bytes when its client went away. */
const readCancelled = (): AgentError => cancelled('the client went away while its read waited for the read-rate limit');

interface Waiter {
  party: object;
  bytes: number;
  /** Start tag: the fair-queueing order. */
  start: number;
  /** Arrival order, between equal start tags. */
  arrival: number;
  resolve(): void;
  reject(err: Error): void;
}

/** A byte budget refilled at a fixed rate; `party` names who asks (a connection), for fairness. */
export class TokenBucket {
  readonly burst: number;
  private tokens: number;
  private refilledAt: number;
  /** Sorted by (start, arrival). */
  private readonly queue: Waiter[] = [];
  /** Each party's finish tag: where its next read's start tag begins. */
  private readonly finishTags = new WeakMap<object, number>();
  /** The start tag of the read granted last. */
  private virtualTime = 0;
  private arrivals = 0;
  private cancelTimer: (() => void) | null = null;

  constructor(readonly bytesPerSecond: number, private readonly clock: Clock = SYSTEM_CLOCK) {
    this.burst = Math.max(bytesPerSecond * BURST_SECONDS, MIN_BURST);
    this.tokens = this.burst;
    this.refilledAt = clock.now();
  }

  /** Resolves once `party` may read `bytes`; grants are taken in fair order, not always in call order. */
  take(bytes: number, party: object): Promise<void> {
    // What accrued while nobody waited is capped before this read starts to wait.
    this.refill();
    const start = Math.max(this.virtualTime, this.finishTags.get(party) ?? 0);
    this.finishTags.set(party, start + bytes);
    return new Promise((resolve, reject) => {
      const waiter: Waiter = { party, bytes, start, arrival: this.arrivals++, resolve, reject };
      let at = this.queue.length;
      while (at > 0 && this.queue[at - 1].start > start) at--;
      this.queue.splice(at, 0, waiter);
      this.serve();
    });
  }

  /** Rejects every read `party` waits for with `reason`; they take nothing. */
  cancel(party: object, reason: Error): void {
    const withdrawn = this.queue.filter((waiter) => waiter.party === party);
    if (withdrawn.length === 0) return;
    this.queue.splice(0, this.queue.length, ...this.queue.filter((waiter) => waiter.party !== party));
    for (const waiter of withdrawn) waiter.reject(reason);
    this.serve();
  }

  /** Grants reads in order while the bucket is not in debt, then sets a timer for when it no longer is. */
  private serve(): void {
    this.cancelTimer?.();
    this.cancelTimer = null;
    this.refill();
    for (let head = this.queue[0]; head !== undefined; head = this.queue[0]) {
      if (this.tokens < 0) {
        const ms = Math.max(1, Math.ceil((-this.tokens * 1000) / this.bytesPerSecond));
        this.cancelTimer = this.clock.schedule(() => this.serve(), ms);
        return;
      }
      this.queue.shift();
      this.tokens -= head.bytes;
      this.virtualTime = head.start;
      head.resolve();
    }
  }

  /** Credits the time since the last refill; while nobody waits, the bucket grows no fuller than the burst. */
  private refill(): void {
    const now = this.clock.now();
    const earned = ((now - this.refilledAt) * this.bytesPerSecond) / 1000;
    this.tokens = this.queue.length > 0 ? this.tokens + earned : Math.max(this.tokens, Math.min(this.burst, this.tokens + earned));
    this.refilledAt = now;
  }
}

export interface ReadLimitSettings {
  /** The whole agent's reads of snapshot images, every door and connection together; null: no limit. */
  readBytesPerSecond: number | null;
  /** Each HTTP or NBD connection's; null: no limit. */
  connectionReadBytesPerSecond: number | null;
}

/** What throttle() needs of a connection (a net.Socket): it is told when the peer has gone. */
export interface Connection {
  readonly destroyed: boolean;
  readonly readableEnded: boolean;
  once(event: 'close' | 'end', listener: () => void): unknown;
}

/** One connection's share: its own bucket, if any, then the agent's. */
class ConnectionBudget {
  private gone: AgentError | null = null;

  constructor(private readonly own: TokenBucket | null, private readonly shared: TokenBucket | null) {}

  async grant(bytes: number): Promise<void> {
    for (const bucket of [this.own, this.shared]) {
      if (this.gone !== null) throw this.gone;
      if (bucket !== null) await bucket.take(bytes, this);
    }
  }

  close(): void {
    if (this.gone !== null) return;
    this.gone = readCancelled();
    this.own?.cancel(this, this.gone);
    this.shared?.cancel(this, this.gone);
  }
}

/** The agent's read-rate limits; the servers share one instance. */
export class ReadLimits {
  private readonly shared: TokenBucket | null;
  private readonly budgets = new WeakMap<Connection, ConnectionBudget>();
  private waitingReads = 0;

  constructor(readonly settings: ReadLimitSettings, private readonly clock: Clock = SYSTEM_CLOCK) {
    this.shared = settings.readBytesPerSecond === null ? null : new TokenBucket(settings.readBytesPerSecond, clock);
  }

  get limited(): boolean {
    return this.settings.readBytesPerSecond !== null || this.settings.connectionReadBytesPerSecond !== null;
  }

  /** Reads waiting for their bytes, over every connection. */
  get waiting(): number {
    return this.waitingReads;
  }

  /** `reader` as `connection` uses it: each read waits for its bytes in every budget that applies. */
  throttle(reader: ImageReader, connection: Connection): ImageReader {
    if (!this.limited) return reader;
    const budget = this.budgetOf(connection);
    const grant = async (bytes: number): Promise<void> => {
      this.waitingReads++;
      try {
        await budget.grant(bytes);
      } finally {
        this.waitingReads--;
      }
    };
    return guardReads(reader, async (_offset, length, use) => {
      await grant(length);
      return use();
    });
  }

  private budgetOf(connection: Connection): ConnectionBudget {
    let budget = this.budgets.get(connection);
    if (budget === undefined) {
      const perConnection = this.settings.connectionReadBytesPerSecond;
      budget = new ConnectionBudget(perConnection === null ? null : new TokenBucket(perConnection, this.clock), this.shared);
      this.budgets.set(connection, budget);
      const closing = budget;
      if (connection.destroyed || connection.readableEnded) {
        closing.close();
      } else {
        connection.once('end', () => closing.close());
        connection.once('close', () => closing.close());
      }
    }
    return budget;
  }
}

/** The hook of each door: `reader` under `limits`, or itself when there are none. */
export function throttle(reader: ImageReader, connection: Connection, limits: ReadLimits | undefined): ImageReader;
export function throttle(reader: ImageReader | null, connection: Connection, limits: ReadLimits | undefined): ImageReader | null;
export function throttle(reader: ImageReader | null, connection: Connection, limits: ReadLimits | undefined): ImageReader | null {
  return reader === null || limits === undefined ? reader : limits.throttle(reader, connection);
}
