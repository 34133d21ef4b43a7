import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { interfaceToJSON } from '../../src/api/json';
import { listInterfaces, parseCpuinfo, parseMeminfo, parseOsRelease, type SystemInfoSources } from '../../src/host/system';
import { VERSION } from '../../src/core/version';
import { FakeAgentService } from './helpers/fake-service';
import { json, startServer, tempDir, type TestServer } from './helpers/server';
import type { SystemInfoJson } from '../../src/api/systeminfo';

const MEMINFO = `MemTotal:        4029224 kB
MemFree:         1717208 kB
MemAvailable:    2974312 kB
Buffers:          130956 kB
Cached:          1281348 kB
SwapCached:            0 kB
Active:          1376540 kB
Inactive:         554684 kB
Dirty:                12 kB
Writeback:             0 kB
Mapped:           205644 kB
Shmem:              1336 kB
Slab:             238048 kB
SReclaimable:     121692 kB
SUnreclaim:       116356 kB
PageTables:         7148 kB
CommitLimit:     6045140 kB
Committed_AS:    2017744 kB
VmallocTotal:   34359738367 kB
HugePages_Total:       2
HugePages_Free:        1
Hugepagesize:       2048 kB
`;

const CPUINFO = `processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 94
model name\t: Intel Core Processor (Skylake, IBRS)
stepping\t: 3
microcode\t: 0x1
cpu MHz\t\t: 2591.998
cache size\t: 16384 KB
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu vme  vmx

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 94
model name\t: Intel Core Processor (Skylake, IBRS)
stepping\t: 3
microcode\t: 0x1
cpu MHz\t\t: 2591.998
cache size\t: 16384 KB
physical id\t: 0
core id\t\t: 1
flags\t\t: fpu
`;

let dir: string;
let sources: SystemInfoSources;

/** A sysfs tree: eth0 (PCI), lo, a bridge with a port and a missing port, a bond, a veth, a tunnel, a dangling entry. */
function makeSysfs(root: string): void {
  const write = (file: string, text: string): void => {
    fs.mkdirSync(path.dirname(path.join(root, file)), { recursive: true });
    fs.writeFileSync(path.join(root, file), `${text}\n`);
  };
  const netDevice = (devicePath: string, attributes: { ifindex: number; type?: number; flags?: string; address?: string }): void => {
    write(`${devicePath}/ifindex`, String(attributes.ifindex));
    write(`${devicePath}/type`, String(attributes.type ?? 1));
    write(`${devicePath}/flags`, attributes.flags ?? '0x1003');
    write(`${devicePath}/address`, attributes.address ?? '');
    fs.mkdirSync(path.join(root, 'class/net'), { recursive: true });
    fs.symlinkSync(path.relative(path.join(root, 'class/net'), path.join(root, devicePath)), path.join(root, 'class/net', path.basename(devicePath)));
  };
  netDevice('devices/pci0000:00/0000:00:03.0/net/eth0', { ifindex: 2, address: '52:54:00:ab:b2:84' });
  fs.symlinkSync('../../../0000:00:03.0', path.join(root, 'devices/pci0000:00/0000:00:03.0/net/eth0/device'));
  netDevice('devices/virtual/net/lo', { ifindex: 1, type: 772, flags: '0x9', address: '00:00:00:00:00:00' });
  netDevice('devices/virtual/net/br0', { ifindex: 4, address: '02:42:74:8a:aa:48' });
  fs.mkdirSync(path.join(root, 'devices/virtual/net/br0/bridge'));
  fs.mkdirSync(path.join(root, 'devices/virtual/net/br0/brif'));
  fs.writeFileSync(path.join(root, 'devices/virtual/net/br0/brif/veth9'), '');
  fs.writeFileSync(path.join(root, 'devices/virtual/net/br0/brif/gone0'), '');
  netDevice('devices/virtual/net/bond0', { ifindex: 3, address: '02:00:00:00:00:03' });
  fs.mkdirSync(path.join(root, 'devices/virtual/net/bond0/bonding'));
  netDevice('devices/virtual/net/veth9', { ifindex: 5, address: '02:00:00:00:00:05' });
  netDevice('devices/virtual/net/tun0', { ifindex: 6, type: 65534, flags: '0x1091' });
  fs.symlinkSync('../../devices/virtual/net/nowhere', path.join(root, 'class/net/dangling'));
  write('devices/system/cpu/cpu1/cpufreq/cpuinfo_max_freq', '3400000');
  fs.mkdirSync(path.join(root, 'firmware/efi'), { recursive: true });
}

before(() => {
  dir = tempDir('csa-systeminfo-');
  fs.mkdirSync(path.join(dir, 'proc'));
  fs.writeFileSync(path.join(dir, 'proc/meminfo'), MEMINFO);
  fs.writeFileSync(path.join(dir, 'proc/cpuinfo'), CPUINFO);
  makeSysfs(path.join(dir, 'sys'));
  fs.writeFileSync(path.join(dir, 'os-release'), 'NAME="CentOS Linux"\nID="centos"\nVERSION_ID="7"\n');
  sources = { procRoot: path.join(dir, 'proc'), sysRoot: path.join(dir, 'sys'), osReleaseFile: path.join(dir, 'os-release') };
});

after(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('systeminfo parsers', () => {
  test('memory: every gopsutil key, in bytes, cached including reclaimable slab, used derived as gopsutil does', () => {
    const memory = parseMeminfo(MEMINFO);
    assert.deepEqual(Object.keys(memory), [
      'total', 'available', 'used', 'usedPercent', 'free', 'active', 'inactive', 'wired', 'laundry', 'buffers', 'cached',
      'writeBack', 'dirty', 'writeBackTmp', 'shared', 'slab', 'sreclaimable', 'sunreclaim', 'pageTables', 'swapCached',
      'commitLimit', 'committedAS', 'highTotal', 'highFree', 'lowTotal', 'lowFree', 'swapTotal', 'swapFree', 'mapped',
      'vmallocTotal', 'vmallocUsed', 'vmallocChunk', 'hugePagesTotal', 'hugePagesFree', 'hugePageSize',
    ]);
    assert.equal(memory.total, 4029224 * 1024);
    assert.equal(memory.cached, (1281348 + 121692) * 1024);
    assert.equal(memory.used, (4029224 - 1717208 - 130956 - 1281348 - 121692) * 1024);
    assert.equal(memory.usedPercent, (memory.used / memory.total) * 100);
    assert.equal(memory.committedAS, 2017744 * 1024);
    assert.equal(memory.hugePagesTotal, 2, 'a count, not bytes');
    assert.equal(memory.hugePageSize, 2097152);
    assert.equal(memory.wired, 0);
  });

  test('cpu_info: one entry per logical CPU with gopsutil names and types', () => {
    const cpus = parseCpuinfo(CPUINFO);
    assert.equal(cpus.length, 2);
    assert.deepEqual(cpus[0], {
      cpu: 0, vendorId: 'GenuineIntel', family: '6', model: '94', stepping: 3, physicalId: '0', coreId: '0', cores: 1,
      modelName: 'Intel Core Processor (Skylake, IBRS)', mhz: 2591.998, cacheSize: 16384, flags: ['fpu', 'vme', 'vmx'], microcode: '0x1',
    });
    assert.equal(cpus[1].coreId, '1');
  });

  test('os-release: ID and VERSION_ID with quotes stripped', () => {
    assert.deepEqual(parseOsRelease('ID="centos"\nVERSION_ID="7"\n'), { name: 'centos', version: '7' });
    assert.deepEqual(parseOsRelease("ID=debian\nVERSION_ID='12'\n"), { name: 'debian', version: '12' });
    assert.deepEqual(parseOsRelease(''), { name: '', version: '' });
  });

  test('interfaces: kernel order, no loopback, the type rules, bridge ports as slaves', async () => {
    const interfaces = (await listInterfaces(sources.sysRoot, {
      eth0: [
        { address: '192.168.122.87', netmask: '255.255.255.0', family: 'IPv4', mac: '52:54:00:ab:b2:84', internal: false, cidr: '192.168.122.87/24' },
        { address: 'fe80::5054:ff:feab:b284', netmask: 'ffff:ffff:ffff:ffff::', family: 'IPv6', mac: '52:54:00:ab:b2:84', internal: false, cidr: 'fe80::5054:ff:feab:b284/64', scopeid: 2 },
      ],
    })).map(interfaceToJSON);
    const veth = { interface_type: 'virtual_interface', mac_address: '02:00:00:00:00:05', ip_addresses: [], nic_name: 'veth9' };
    assert.deepEqual(interfaces, [
      { interface_type: 'physical_interface', mac_address: '52:54:00:ab:b2:84', ip_addresses: ['192.168.122.87/24', 'fe80::5054:ff:feab:b284/64'], nic_name: 'eth0' },
      { interface_type: 'bond_interface', mac_address: '02:00:00:00:00:03', ip_addresses: [], nic_name: 'bond0' },
      { interface_type: 'bridge_interface', mac_address: '02:42:74:8a:aa:48', ip_addresses: [], nic_name: 'br0', slaves: [null, veth] },
      veth,
      { interface_type: 'tunnel_interface', mac_address: '', ip_addresses: [], nic_name: 'tun0' },
    ]);
  });
});

describe('GET /systeminfo', () => {
  let server: TestServer;
  let service: FakeAgentService;
  before(async () => {
    service = new FakeAgentService([
      { name: 'vda', file: '/dev/null', size: 1024, tracked: true },
      { name: 'dm-0', file: '/dev/null', size: 1024, isVirtual: true },
    ]);
    server = await startServer({ service, systemInfo: sources });
  });
  after(() => server.close());

  test('the Go agent\'s shape, disks as the default /disks listing', async () => {
    for (const route of ['/api/v1/systeminfo', '/api/v1/systeminfo/']) {
      const response = await server.request(route);
      assert.equal(response.status, 200);
      const info = json(response) as SystemInfoJson;
      assert.deepEqual(Object.keys(info), ['memory', 'cpus', 'network_interfaces', 'disks', 'os_info', 'hostname', 'firmware_type', 'agent_version', 'agent_commit']);
      assert.equal(info.agent_version, VERSION);
      assert.equal(info.agent_commit, null, 'a development tree has no build record');
      assert.equal(info.memory.total, 4029224 * 1024);
      assert.deepEqual(Object.keys(info.cpus), ['physical_cores', 'logical_cores', 'cpu_info']);
      assert.ok(Number.isInteger(info.cpus.physical_cores) && info.cpus.physical_cores > 0);
      assert.equal(info.cpus.cpu_info[1].mhz, 3400, 'cpufreq max frequency wins, as in gopsutil');
      assert.equal(info.network_interfaces.length, 5);
      assert.deepEqual(info.disks.map((disk: { name: string; id?: string }) => [disk.name, disk.id]), [['vda', 'vda']]);
      assert.deepEqual(info.os_info, { platform: 'linux', os_name: 'centos', os_version: '7' });
      assert.equal(typeof info.hostname, 'string');
      assert.equal(info.firmware_type, 'efi');
    }
    assert.deepEqual(service.calls.listDisks.at(-1), { includeVirtual: false, includeSwap: false });
  });

  test('on this host: real files, every field present', async () => {
    const live = await startServer({ service });
    try {
      const info = json(await live.request('/api/v1/systeminfo')) as SystemInfoJson;
      assert.ok(info.memory.total > 0);
      assert.ok(info.cpus.cpu_info.length >= 1);
      assert.equal(info.cpus.logical_cores, info.cpus.cpu_info.length);
      assert.ok(Array.isArray(info.network_interfaces));
      assert.ok(!info.network_interfaces.some((nic: { nic_name: string }) => nic.nic_name === 'lo'));
      assert.match(info.os_info.os_name, /^[a-z]+$/);
      assert.ok(['efi', 'bios'].includes(info.firmware_type));
    } finally {
      await live.close();
    }
  });
});
