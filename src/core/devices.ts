// The words every layer uses for block devices and spans of them, defined once.

/** A block device number, as `stat().st_rdev` and `/sys/class/block/<name>/dev` give it. */
export interface DeviceId {
  major: number;
  minor: number;
}

/** A byte range [offset, offset + length) of a device, a file or an image. */
export interface ByteRange {
  offset: number;
  length: number;
}

export const sameDevice = (a: DeviceId, b: DeviceId): boolean => a.major === b.major && a.minor === b.minor;

/** "8:16", as sysfs and /proc spell device numbers. */
export const showDevice = (device: DeviceId): string => `${device.major}:${device.minor}`;

export function parseDeviceId(text: string): DeviceId | undefined {
  const match = /^(\d+):(\d+)$/.exec(text.trim());
  return match ? { major: Number(match[1]), minor: Number(match[2]) } : undefined;
}
