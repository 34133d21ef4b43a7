// Loads the compiled addon once. Every native facade module imports the raw binding from here
// and gives it types; nothing else in the agent touches the .node file.
import path from 'node:path';

// dist/src/native/binding.js -> <root>/build/Release; src/native/binding.ts (ts-node style) -> same root.
const root = path.resolve(__dirname, __dirname.includes(`${path.sep}dist${path.sep}`) ? '../../..' : '../..');

// eslint-disable-next-line @typescript-eslint/no-require-imports
export const binding: Record<string, any> = require(path.join(root, 'build', 'Release', 'coriolis_native.node'));

/** An error raised by a failed syscall in the addon. */
export interface SystemError extends Error {
  code: string;
  errno: number;
  syscall: string;
  path?: string;
}

export function isSystemError(err: unknown, code?: string): err is SystemError {
  return err instanceof Error && typeof (err as SystemError).syscall === 'string' &&
    (code === undefined || (err as SystemError).code === code);
}
