// Argument checks shared by the native facades: they throw before anything reaches the addon.

/** Throws TypeError unless `value` is an integer, RangeError unless it is a non-negative safe one. */
export function checkByteCount(value: number, name: string): void {
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    throw new TypeError(`${name} must be an integer, got ${String(value)}`);
  }
  if (value < 0 || !Number.isSafeInteger(value)) {
    throw new RangeError(`${name} must be a non-negative safe integer, got ${value}`);
  }
}

export function checkPath(path: string): void {
  if (typeof path !== 'string' || path.length === 0) throw new TypeError('path must be a non-empty string');
}
