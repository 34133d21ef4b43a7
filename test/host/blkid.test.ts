// blkid and partx on image files: no root needed.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { blkidProbe, parseBlkidExport, partitionEntries, run } from '../../src/host/blkid';
import { findCommand } from '../native/helpers/loop';
import { partitionImage, sh } from '../storage/helpers';

const MiB = 1024 * 1024;
let tmp: string;

before(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'coriolis-blkid-')); });
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function image(name: string, size = 64 * MiB): string {
  const file = path.join(tmp, name);
  fs.writeFileSync(file, '');
  fs.truncateSync(file, size);
  return file;
}

const noSfdisk = findCommand('sfdisk') === undefined ? 'sfdisk is not installed (Debian package fdisk)' : false;

describe('blkid', () => {
  it('parses -o export output and its escapes', () => {
    assert.deepEqual(parseBlkidExport('DEVNAME=/dev/sda1\nLABEL=my\\ \\"disk\\\\\nUUID=abc\n\nnonsense\n'), {
      DEVNAME: '/dev/sda1', LABEL: 'my "disk\\', UUID: 'abc',
    });
  });

  it('reports a filesystem with its label, escapes included', async () => {
    const file = image('fs.img', 16 * MiB);
    sh('mkfs.ext4', ['-q', '-F', '-L', 'a "b\\', file]);
    const values = await blkidProbe(file);
    assert.equal(values.TYPE, 'ext4');
    assert.equal(values.LABEL, 'a "b\\');
    assert.match(values.UUID, /^[0-9a-f-]{36}$/);
    assert.equal(values.DEVNAME, undefined);
  });

  it('answers {} for a blank device, and rejects a missing one', async () => {
    assert.deepEqual(await blkidProbe(image('blank.img', MiB)), {});
    await assert.rejects(blkidProbe(path.join(tmp, 'missing.img')), /no such file/);
  });

  it('gives up on a command that does not answer', async () => {
    const started = Date.now();
    await assert.rejects(run('sleep', ['10'], 100), /no answer after 100 ms/);
    assert.ok(Date.now() - started < 2000);
  });

  it('reads the partition table and the filesystems inside an image file', { skip: noSfdisk }, async () => {
    const file = image('gpt.img');
    partitionImage(file, [
      'label: gpt',
      'label-id: 0C2D9A3E-97B1-4C6E-8C1B-1E2F3A4B5C6D',
      'start=2048, size=20480, uuid=5E6F7A8B-0000-4000-8000-000000000001',
      'start=22528, size=8192, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F',
    ].join('\n'));
    sh('mkfs.ext4', ['-q', '-F', '-L', 'data', '-E', `offset=${2048 * 512}`, file, '10M']);
    assert.deepEqual(await blkidProbe(file), { PTTYPE: 'gpt', PTUUID: '0c2d9a3e-97b1-4c6e-8c1b-1e2f3a4b5c6d' });
    const entries = await partitionEntries(file);
    assert.deepEqual(entries.map(({ uuid, ...rest }) => ({ ...rest, uuidLength: uuid.length })), [
      { number: 1, startSector512: 2048, sectors512: 20480, type: '0fc63daf-8483-4772-8e79-3d69d8477de4', uuidLength: 36 },
      { number: 2, startSector512: 22528, sectors512: 8192, type: '0657fd6d-a4ab-43c4-84e5-0933c84b4f4f', uuidLength: 36 },
    ]);
    assert.equal(entries[0].uuid, '5e6f7a8b-0000-4000-8000-000000000001');
    const inside = await blkidProbe(file, { offset: 2048 * 512, size: 20480 * 512 });
    assert.equal(inside.TYPE, 'ext4');
    assert.equal(inside.LABEL, 'data');
  });

  it('lists dos partitions, logical ones included, as blkid names them', { skip: noSfdisk }, async () => {
    const file = image('dos.img');
    partitionImage(file, 'label: dos\nlabel-id: 0x73ac85a2\n,10M,83\n,,5\n,5M,82\n,,83\n');
    assert.deepEqual((await partitionEntries(file)).map((e) => [e.number, e.uuid, e.type]), [
      [1, '73ac85a2-01', '0x83'], [2, '73ac85a2-02', '0x5'], [5, '73ac85a2-05', '0x82'], [6, '73ac85a2-06', '0x83'],
    ]);
  });

  it('rejects a file without a partition table', async () => {
    await assert.rejects(partitionEntries(image('none.img', MiB)), /partx/);
  });
});
