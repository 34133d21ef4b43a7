// Runs async work one piece at a time, in the order asked: for the kernel's ioctls, which the
// module does not serialise, and for the snapshot lifecycle. A failure does not stop the queue.
export class SerialQueue {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(work: () => Promise<T>): Promise<T> {
    const result = this.tail.then(work, work);
    this.tail = result.catch(() => undefined);
    return result;
  }

  /** Resolves once everything queued so far has finished. */
  async idle(): Promise<void> {
    await this.tail;
  }
}
