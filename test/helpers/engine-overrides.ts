// Engines with some methods replaced, the way tests inject kernel failures: every other member
// is the engine's own, bound to it.
import type { SnapshotEngine } from '../../src/engine/types';

type Method = { [K in keyof SnapshotEngine]: SnapshotEngine[K] extends (...args: never[]) => unknown ? K : never }[keyof SnapshotEngine];
type AnyMethod = (...args: unknown[]) => Promise<unknown>;

export function withOverrides(engine: SnapshotEngine, overrides: Partial<Pick<SnapshotEngine, Method>>): SnapshotEngine {
  return new Proxy(engine, {
    get(target, property, receiver) {
      const override: unknown = (overrides as Record<PropertyKey, unknown>)[property];
      if (override !== undefined) return override;
      const value: unknown = Reflect.get(target, property, receiver);
      return typeof value === 'function' ? (value as AnyMethod).bind(target) : value;
    },
  });
}

/** An engine whose `method` rejects with errno `code` on the calls `fails` picks (numbered from 0). */
export function failingCalls(method: Method, fails: (call: number) => boolean, code = 'EIO') {
  return (engine: SnapshotEngine): SnapshotEngine => {
    let calls = 0;
    const original = (engine[method] as AnyMethod).bind(engine);
    const replaced: AnyMethod = (...args) => (fails(calls++)
      ? Promise.reject(Object.assign(new Error(`injected ${method} failure`), { code }))
      : original(...args));
    return withOverrides(engine, { [method]: replaced });
  };
}
