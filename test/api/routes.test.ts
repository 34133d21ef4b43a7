import assert from 'node:assert/strict';
import fs from 'node:fs';
import zlib from 'node:zlib';
import { after, before, beforeEach, describe, test } from 'node:test';
import { FakeAgentService } from './helpers/fake-service';
import { json, randomFile, startServer, tempDir, type Response, type TestServer } from './helpers/server';

const MiB = 1024 * 1024;
let dir: string;
let server: TestServer;
let service: FakeAgentService;

before(async () => {
  dir = tempDir('csa-api-routes-');
  const vda = randomFile(dir, 'vda.img', MiB);
  service = new FakeAgentService([
    { name: 'vda', file: vda.file, size: MiB, tracked: true, mapped: true },
    { name: 'vdc', file: vda.file, size: MiB, tracked: true },
    { name: 'vdd', file: vda.file, size: MiB },
    { name: 'dm-0', file: vda.file, size: MiB, isVirtual: true },
    { name: 'vde', file: vda.file, size: MiB, swap: true },
  ]);
  server = await startServer({ service });
});

after(async () => {
  await server.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  service.snapshots.clear();
  service.mappings.splice(0, service.mappings.length, { id: 'mapping-vda', trackedDiskId: 'vda', storageLocation: '/mnt/snapstores/snapstore_files' });
  service.calls.listDisks.length = 0;
  service.calls.changes.length = 0;
  service.calls.createSnapshot.length = 0;
});

const get = (path: string, headers?: Record<string, string>): Promise<Response> => server.request(path, { headers });
const post = (path: string, body: string | Buffer, contentType = 'application/json', headers: Record<string, string> = {}): Promise<Response> =>
  server.request(path, { method: 'POST', body, headers: { 'Content-Type': contentType, ...headers } });

function assertJson(response: Response, status: number): unknown {
  assert.equal(response.status, status, response.body.toString());
  assert.match(String(response.headers['content-type']), /^application\/json/);
  return json(response);
}

/** A 4xx/5xx with the {error, details} body, details matching `details`. */
function assertError(response: Response, status: number, label: string, details: RegExp): void {
  const body = assertJson(response, status) as { error: string; details: string };
  assert.deepEqual(Object.keys(body), ['error', 'details']);
  assert.equal(body.error, label);
  assert.match(body.details, details);
}

async function createSnapshot(ids: string[] = ['vda']): Promise<string> {
  const body = assertJson(await post('/api/v1/snapshots', JSON.stringify({ tracked_disk_ids: ids })), 200) as { snapshot_id: string };
  return body.snapshot_id;
}

describe('disks', () => {
  test('list, with and without the trailing slash, flags defaulting to false', async () => {
    for (const path of ['/api/v1/disks', '/api/v1/disks/']) {
      const disks = assertJson(await get(path), 200) as Array<Record<string, unknown>>;
      assert.deepEqual(disks.map((disk) => disk.name), ['vda', 'vdc', 'vdd']);
      assert.equal(disks[0].id, 'vda');
      assert.equal('id' in disks[2], false, 'an untracked disk has no id');
      assert.equal(disks[0].device_minor, 0, 'minor 0 is shown');
    }
    assert.deepEqual(service.calls.listDisks, [
      { includeVirtual: false, includeSwap: false }, { includeVirtual: false, includeSwap: false },
    ]);
  });

  test('includeVirtual and includeSwap take every Go ParseBool spelling', async () => {
    const spellings: Array<[string, boolean]> = [
      ['1', true], ['t', true], ['T', true], ['TRUE', true], ['true', true], ['True', true],
      ['0', false], ['f', false], ['F', false], ['FALSE', false], ['false', false], ['False', false], ['', false],
    ];
    for (const [value, expected] of spellings) {
      service.calls.listDisks.length = 0;
      assertJson(await get(`/api/v1/disks/?includeVirtual=${value}&includeSwap=${value}`), 200);
      assert.deepEqual(service.calls.listDisks, [{ includeVirtual: expected, includeSwap: expected }], value);
    }
    const all = assertJson(await get('/api/v1/disks?includeVirtual=True&includeSwap=1'), 200) as unknown[];
    assert.equal(all.length, 5);
  });

  test('a flag that is not a boolean, or given twice, is a 400 naming it', async () => {
    assertError(await get('/api/v1/disks?includeVirtual=yes'), 400, 'Bad Request', /includeVirtual must be a boolean.*"yes"/);
    assertError(await get('/api/v1/disks/?includeSwap=2'), 400, 'Bad Request', /includeSwap must be a boolean/);
    assertError(await get('/api/v1/disks?includeSwap=1&includeSwap=0'), 400, 'Bad Request', /includeSwap is given 2 times/);
  });

  test('flags: other letter cases, padding, escapes and repeats are 400s; unknown parameters are ignored', async () => {
    for (const value of ['tRUE', 'yes', 'on', '%20true', 'true%00', '%E0']) {
      assertError(await get(`/api/v1/disks?includeVirtual=${value}`), 400, 'Bad Request', /includeVirtual must be a boolean/);
    }
    assertError(await get('/api/v1/disks?includeVirtual=1&includeVirtual=1'), 400, 'Bad Request', /given 2 times/);
    assertJson(await get('/api/v1/disks?includevirtual=1&__proto__=1&constructor=x'), 200);
    assert.deepEqual(service.calls.listDisks.at(-1), { includeVirtual: false, includeSwap: false }, 'parameter names are case-sensitive');
  });

  test('one disk: tracked gives the disk with its id, anything else 404', async () => {
    for (const path of ['/api/v1/disks/vda', '/api/v1/disks/vda/']) {
      const disk = assertJson(await get(path), 200) as Record<string, unknown>;
      assert.equal(disk.id, 'vda');
      assert.equal(disk.path, '/dev/vda');
      assert.equal(disk.physical_sector_size, 4096);
    }
    assertError(await get('/api/v1/disks/vdd'), 404, 'Not Found', /vdd is not tracked/);
    assertError(await get('/api/v1/disks/nosuch/'), 404, 'Not Found', /nosuch/);
  });
});

describe('snapshots', () => {
  test('create, list, get and delete, with and without trailing slashes', async () => {
    const created = assertJson(await post('/api/v1/snapshots/', '{"tracked_disk_ids": ["vda"]}'), 200) as Record<string, unknown>;
    const id = created.snapshot_id as string;
    assert.equal(id, '18446633009895023040', 'an opaque decimal string, never a rounded number');
    assert.deepEqual(created, {
      snapshot_id: id,
      volume_snapshots: [{
        snapshot_number: 3,
        generation_id: '80564045-085a-4b1c-82d4-7410bce63d4a',
        original_device: { tracking_id: 'vda', device_path: '/dev/vda', major: 252, minor: 0 },
        snapshot_image: { device_path: '/dev/veeamimage0', major: 251, minor: 0 },
        cbt_block_size_bytes: 262144,
        size: MiB,
      }],
      state: 'ok',
      at_risk: false,
      created_at: '2024-05-01T10:00:00.000Z',
      exports: [{ nbd_export_name: `${id}/vda`, http_path: `/api/v1/snapshots/${id}/consume/vda`, tracked_disk_id: 'vda' }],
    });
    assert.match(created.snapshot_id, /^\d+$/);

    for (const path of ['/api/v1/snapshots', '/api/v1/snapshots/']) {
      assert.deepEqual(assertJson(await get(path), 200), [created]);
    }
    for (const path of [`/api/v1/snapshots/${id}`, `/api/v1/snapshots/${id}/`]) {
      assert.deepEqual(assertJson(await get(path), 200), created);
    }

    const deleted = await server.request(`/api/v1/snapshots/${id}/`, { method: 'DELETE' });
    assert.equal(deleted.status, 200);
    assert.equal(deleted.body.length, 0);
    assert.equal(deleted.headers['content-length'], '0');
    assert.match(String(deleted.headers['content-type']), /^application\/json/);
    assertError(await get(`/api/v1/snapshots/${id}`), 404, 'Not Found', new RegExp(`snapshot ${id} not found`));
    // Deleting what is not there succeeds, as in the original agent.
    assert.equal((await server.request(`/api/v1/snapshots/${id}`, { method: 'DELETE' })).status, 200);
    assertJson(await get('/api/v1/snapshots'), 200);
  });

  test('an empty list is [] and a failed snapshot shows its state and reason', async () => {
    assert.deepEqual(assertJson(await get('/api/v1/snapshots'), 200), []);
    const id = await createSnapshot();
    service.failSnapshot(id, 'snapstore of vda overflowed');
    const snapshot = assertJson(await get(`/api/v1/snapshots/${id}`), 200) as Record<string, unknown>;
    assert.equal(snapshot.state, 'failed');
    assert.equal(snapshot.failure_reason, 'snapstore of vda overflowed');
  });

  test('the body is JSON whatever Content-Type says; keys match as Go does; unknown keys are ignored', async () => {
    assertJson(await post('/api/v1/snapshots', '{"tracked_disk_ids":["vda"],"extra":1}', 'application-json'), 200);
    service.snapshots.clear();
    assertJson(await post('/api/v1/snapshots', '{"Tracked_Disk_IDs":["vda"]}', 'text/plain'), 200);
    service.snapshots.clear();
    assertJson(await post('/api/v1/snapshots', '{"tracked_disk_ids":["vda"]}', ''), 200);
  });

  test('malformed or wrong bodies are 400s that say what is wrong', async () => {
    const cases: Array<[string, RegExp]> = [
      ['', /body is empty/],
      ['   ', /body is empty/],
      ['{"tracked_disk_ids": ["vda"', /not valid JSON/],
      ['[]', /must be a JSON object/],
      ['null', /must be a JSON object/],
      ['"vda"', /must be a JSON object/],
      ['{}', /tracked_disk_ids is required/],
      ['{"tracked_disk_ids": null}', /must be a list of tracked disk ids, got null/],
      ['{"tracked_disk_ids": "vda"}', /must be a list .* got string "vda"/],
      ['{"tracked_disk_ids": []}', /tracked_disk_ids is empty/],
      ['{"tracked_disk_ids": [1]}', /tracked_disk_ids\[0\] must be a non-empty string, got number 1/],
      ['{"tracked_disk_ids": ["vda", ""]}', /tracked_disk_ids\[1\] must be a non-empty string/],
      ['{"tracked_disk_ids": ["vda", "vda"]}', /lists "vda" more than once/],
    ];
    for (const [body, details] of cases) {
      assertError(await post('/api/v1/snapshots', body), 400, 'Bad Request', details);
    }
    assert.deepEqual(service.calls.createSnapshot, [], 'nothing invalid reaches the service');
    assertError(await post('/api/v1/snapshots', 'tracked_disk_ids=vda', 'application/x-www-form-urlencoded'), 415, 'Unsupported Media Type', /takes a JSON body/);
  });

  test('deeply nested, huge or oddly typed JSON: 400s saying what is wrong, never a 500', async () => {
    const cases: Array<[string, RegExp]> = [
      ['['.repeat(30_000) + ']'.repeat(30_000), /must be a JSON object/],
      [`{"tracked_disk_ids": ${'['.repeat(20_000)}${']'.repeat(20_000)}}`, /tracked_disk_ids\[0\] must be a non-empty string, got an array/],
      ['{"tracked_disk_ids": [1e400]}', /got number Infinity/],
      ['{"tracked_disk_ids": [18446633009895023040]}', /got number/],
      ['{"tracked_disk_ids": {"0": "vda"}}', /must be a list .* got an object/],
      ['{"tracked_disk_ids": ["vda"]} trailing', /not valid JSON/],
      ['true', /must be a JSON object/],
      ['{"__proto__": {"tracked_disk_ids": ["vda"]}}', /tracked_disk_ids is required/],
    ];
    for (const [body, details] of cases) {
      assertError(await post('/api/v1/snapshots', body), 400, 'Bad Request', details);
    }
    assert.deepEqual(service.calls.createSnapshot, []);
  });

  test('a field given in two spellings is a 400 naming both, not a silent pick of one', async () => {
    assertError(await post('/api/v1/snapshots', '{"tracked_disk_ids": ["vda"], "TRACKED_DISK_IDS": ["vdc"]}'), 400, 'Bad Request',
      /tracked_disk_ids is given more than once, as "tracked_disk_ids" and "TRACKED_DISK_IDS"/);
    assertError(await post('/api/v1/snapstoremappings', 'Tracked_Disk_Id=vdc&tracked_disk_id=vdd&snapstore_location_id=/x', 'application/x-www-form-urlencoded'),
      400, 'Bad Request', /tracked_disk_id is given more than once/);
    assert.deepEqual(service.calls.createSnapshot, []);
  });

  test('bodies that cannot be read as JSON text are 415s saying why: compressed, another charset, multipart', async () => {
    const body = '{"tracked_disk_ids": ["vda"]}';
    assertError(await post('/api/v1/snapshots', zlib.gzipSync(body), 'application/json', { 'Content-Encoding': 'gzip' }), 415, 'Unsupported Media Type',
      /takes a JSON body, uncompressed, not a body with Content-Encoding gzip/);
    assertError(await post('/api/v1/snapshots', Buffer.from(body, 'utf16le'), 'application/json; charset=UTF-16LE'), 415, 'Unsupported Media Type',
      /takes a JSON body in UTF-8, not charset utf-16le/);
    assertError(await post('/api/v1/snapstoremappings', 'tracked_disk_id=vd%E9', 'application/x-www-form-urlencoded; charset=ISO-8859-1'), 415,
      'Unsupported Media Type', /not charset iso-8859-1/);
    assertError(await post('/api/v1/snapstoremappings', '--b\r\nContent-Disposition: form-data; name="tracked_disk_id"\r\n\r\nvdc\r\n--b--\r\n',
      'multipart/form-data; boundary=b'), 415, 'Unsupported Media Type', /takes a JSON body or an application\/x-www-form-urlencoded form, not multipart\/form-data/);
    assert.deepEqual(service.calls.createSnapshot, []);
    for (const type of ['application/json; charset=utf-8', 'application/json;charset="UTF-8"', 'application/json; charset=utf8', 'application/json; charset=us-ascii']) {
      assertJson(await post('/api/v1/snapshots', body, type, { 'Content-Encoding': 'identity' }), 200);
      service.snapshots.clear();
    }
  });

  test('bytes that are not UTF-8 are a 400, never a disk id with U+FFFD in it; a byte order mark is ignored', async () => {
    assertError(await post('/api/v1/snapshots', Buffer.from('{"tracked_disk_ids": ["v\xe9"]}', 'latin1')), 400, 'Bad Request', /not valid UTF-8/);
    assertError(await post('/api/v1/snapstoremappings', 'tracked_disk_id=vd%E9&snapstore_location_id=%2Fx', 'application/x-www-form-urlencoded'),
      400, 'Bad Request', /form field "vd%E9" is not valid percent-encoded UTF-8/);
    assert.deepEqual(service.calls.createSnapshot, []);
    assertJson(await post('/api/v1/snapshots', Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{"tracked_disk_ids": ["vda"]}')])), 200);
  });

  test('the service\'s refusals reach the client as they are: 404 for what it does not know', async () => {
    assertError(await post('/api/v1/snapshots', '{"tracked_disk_ids": ["nosuch"]}'), 404, 'Not Found', /nosuch is not tracked/);
  });

  test('a body over the limit is a 413 and the connection closes', async () => {
    const big = JSON.stringify({ tracked_disk_ids: ['vda'], padding: 'x'.repeat(70 * 1024) });
    const response = await post('/api/v1/snapshots', big);
    assertError(response, 413, 'Payload Too Large', /larger than 65536 bytes/);
    assert.equal(response.headers.connection, 'close');
  });

  test('a chunked body over the limit (no Content-Length) is a 413 too', async () => {
    const response = await new Promise<Response>((resolve, reject) => {
      void import('node:https').then((https) => {
        const req = https.request({
          host: '127.0.0.1', servername: 'localhost', port: server.port, path: '/api/v1/snapshots', method: 'POST', ca: server.ca,
          cert: fs.readFileSync(server.certs.clientCert), key: fs.readFileSync(server.certs.clientKey), agent: false,
          headers: { 'Content-Type': 'application/json', 'Transfer-Encoding': 'chunked' },
        }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (chunk: Buffer) => chunks.push(chunk));
          res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
        });
        req.on('error', reject);
        for (let i = 0; i < 20; i++) req.write('x'.repeat(8192));
        req.end();
      });
    });
    assertError(response, 413, 'Payload Too Large', /larger than/);
  });
});

describe('changes', () => {
  test('no query: full; with both previous values: incremental, upper-case UUID normalised', async () => {
    const id = await createSnapshot();
    for (const path of [`/api/v1/snapshots/${id}/changes/vda`, `/api/v1/snapshots/${id}/changes/vda/`]) {
      assert.deepEqual(assertJson(await get(path), 200), {
        tracked_disk_id: 'vda', snapshot_id: id, cbt_block_size_bytes: 262144, backup_type: 'full', ranges: [{ start_offset: 0, length: MiB }],
      });
    }
    const incremental = assertJson(await get(`/api/v1/snapshots/${id}/changes/vda/?previousGenerationID=80564045-085A-4B1C-82D4-7410BCE63D4A&previousNumber=2`), 200) as Record<string, unknown>;
    assert.equal(incremental.backup_type, 'incremental');
    assert.deepEqual(incremental.ranges, [{ start_offset: 0, length: 262144 }, { start_offset: 1048576, length: 524288 }]);
    assert.deepEqual(service.calls.changes.at(-1), { previousGenerationId: '80564045-085a-4b1c-82d4-7410bce63d4a', previousNumber: 2 });
  });

  test('previousNumber bounds and previousGenerationID forms', async () => {
    const id = await createSnapshot();
    const base = `/api/v1/snapshots/${id}/changes/vda`;
    assertJson(await get(`${base}?previousNumber=0`), 200);
    assertJson(await get(`${base}?previousNumber=4294967295`), 200);
    assert.deepEqual(service.calls.changes.at(-1), { previousNumber: 4294967295 });
    assertJson(await get(`${base}?previousGenerationID={80564045-085a-4b1c-82d4-7410bce63d4a}`), 200);
    assertJson(await get(`${base}?previousGenerationID=urn:uuid:80564045-085a-4b1c-82d4-7410bce63d4a`), 200);
    assertJson(await get(`${base}?previousGenerationID=80564045085a4b1c82d47410bce63d4a&previousNumber=`), 200);
    assert.deepEqual(service.calls.changes.at(-1), { previousGenerationId: '80564045-085a-4b1c-82d4-7410bce63d4a' });

    for (const bad of ['-1', '4294967296', '1.5', 'abc', '0x10', ' 1', '99999999999999999999']) {
      assertError(await get(`${base}?previousNumber=${encodeURIComponent(bad)}`), 400, 'Bad Request', /previousNumber must be an integer from 0 to 4294967295/);
    }
    for (const bad of ['not-a-uuid', '80564045-085a-4b1c-82d4-7410bce63d4', '{80564045-085a-4b1c-82d4-7410bce63d4a', '80564045-085a-4b1c-82d4-7410bce63d4g']) {
      assertError(await get(`${base}?previousGenerationID=${encodeURIComponent(bad)}`), 400, 'Bad Request', /previousGenerationID must be a UUID/);
    }
  });

  test('unknown snapshot or disk is 404', async () => {
    const id = await createSnapshot();
    assertError(await get('/api/v1/snapshots/123/changes/vda'), 404, 'Not Found', /snapshot 123 not found/);
    assertError(await get(`/api/v1/snapshots/${id}/changes/vdc`), 404, 'Not Found', /volume snapshot for vdc/);
  });
});

describe('snapstores, locations, mappings', () => {
  test('lists in the original shapes', async () => {
    assert.deepEqual(assertJson(await get('/api/v1/snapstores'), 200), []);
    await createSnapshot();
    for (const path of ['/api/v1/snapstores', '/api/v1/snapstores/']) {
      assert.deepEqual(assertJson(await get(path), 200), [{
        id: 'store-vda', tracked_disk_id: 'vda', storage_location: '/mnt/snapstores/snapstore_files',
        allocated_disk_space: 5368709120, used_disk_space: 1073741824, used_disk_space_as_of: '2024-05-01T10:05:00.000Z', at_risk: false,
      }]);
    }
    for (const path of ['/api/v1/snapstorelocations', '/api/v1/snapstorelocations/']) {
      assert.deepEqual(assertJson(await get(path), 200), [{
        available_capacity: 39791616000, allocated_capacity: 0, total_capacity: 42006183936,
        path: '/mnt/snapstores/snapstore_files', device_path: '/dev/vdb1', major: 252, minor: 17,
      }]);
    }
    for (const path of ['/api/v1/snapstoremappings', '/api/v1/snapstoremappings/']) {
      assert.deepEqual(assertJson(await get(path), 200), [{ id: 'mapping-vda', tracked_disk_id: 'vda', storage_location: '/mnt/snapstores/snapstore_files' }]);
    }
  });

  test('create a mapping from JSON or from a form', async () => {
    const created = assertJson(await post('/api/v1/snapstoremappings/', '{"snapstore_location_id": "/mnt/snapstores/snapstore_files", "tracked_disk_id": "vdc"}'), 200);
    assert.deepEqual(created, { id: 'mapping-vdc', tracked_disk_id: 'vdc', storage_location: '/mnt/snapstores/snapstore_files' });
    service.mappings.pop();
    const form = assertJson(await post('/api/v1/snapstoremappings', 'snapstore_location_id=%2Fmnt%2Fsnapstores%2Fsnapstore_files&tracked_disk_id=vdc', 'application/x-www-form-urlencoded; charset=utf-8'), 200);
    assert.deepEqual(form, created);
  });

  test('mapping refusals: missing or empty fields 400 (the agent\'s own refusals: test/e2e/refusals.test.ts)', async () => {
    const cases: Array<[string, string, RegExp]> = [
      ['{}', 'application/json', /field tracked_disk_id is required/],
      ['{"tracked_disk_id": "vdc"}', 'application/json', /field snapstore_location_id is required/],
      ['{"tracked_disk_id": "", "snapstore_location_id": "/x"}', 'application/json', /tracked_disk_id must be a non-empty string/],
      ['{"tracked_disk_id": 5, "snapstore_location_id": "/x"}', 'application/json', /tracked_disk_id must be a non-empty string, got number 5/],
      ['{"tracked_disk_id": "vdc", "snapstore_location_id": ["/x"]}', 'application/json', /snapstore_location_id must be a non-empty string, got an array/],
      ['not json', 'application/json', /not valid JSON/],
      ['tracked_disk_id=vdc', 'application/x-www-form-urlencoded', /snapstore_location_id is required/],
      ['tracked_disk_id=vdc&tracked_disk_id=vda&snapstore_location_id=/x', 'application/x-www-form-urlencoded', /tracked_disk_id is given more than once/],
    ];
    for (const [body, type, details] of cases) {
      assertError(await post('/api/v1/snapstoremappings', body, type), 400, 'Bad Request', details);
    }
  });
});

describe('unknown routes and methods', () => {
  const NOT_FOUND = { error: 'Not found', details: 'Resource not found' };

  test('unknown paths, outside and inside the prefix, get the JSON 404', async () => {
    for (const path of ['/', '/api', '/api/v1', '/api/v1/', '/api/v1/nothing', '/api/v1/disks/vda/extra', '/API/V1/DISKS', '/api/v2/disks',
      '/api/v1/snapshots/1/consume', '/api/v1//disks']) {
      assert.deepEqual(assertJson(await get(path), 404), NOT_FOUND, path);
    }
  });

  test('odd ids in the path (NUL, encoded slash, dots, bad escapes, overlong) are a JSON 404 naming the id, never a 500', async () => {
    const id = await createSnapshot();
    const ids: Array<[string, string]> = [
      ['a%00b', 'a\u0000b'], ['a%2Fb', 'a/b'], ['..', '..'], ['1.5', '1.5'], ['%E0%A4%A', '%E0%A4%A'], ['%ZZ', '%ZZ'], ['x'.repeat(8000), 'x'.repeat(8000)],
      [`${id}%20`, `${id} `], ['-1', '-1'], ['%F0%9F%92%BE', '\u{1F4BE}'],
    ];
    for (const [raw, decoded] of ids) {
      const escaped = decoded.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      assertError(await get(`/api/v1/disks/${raw}`), 404, 'Not Found', new RegExp(`disk ${escaped} is not tracked`));
      assertError(await get(`/api/v1/snapshots/${raw}/`), 404, 'Not Found', new RegExp(`snapshot ${escaped} not found`));
      assertError(await get(`/api/v1/snapshots/${raw}/changes/vda`), 404, 'Not Found', new RegExp(`snapshot ${escaped} not found`));
      assertError(await get(`/api/v1/snapshots/${id}/changes/${raw}`), 404, 'Not Found', new RegExp(`volume snapshot for ${escaped}`));
    }
    assert.equal(service.snapshots.size, 1, 'the snapshot is still the only one');
  });

  test('a known path with a method it does not take is a JSON 405 whose Allow lists the methods it does', async () => {
    const id = await createSnapshot();
    const attempts: Array<[string, string, string]> = [
      ['PUT', '/api/v1/snapshots/', 'HEAD, GET, POST'], ['PUT', '/api/v1/disks', 'HEAD, GET'], ['DELETE', '/api/v1/disks/vda', 'HEAD, GET'],
      ['POST', '/api/v1/disks', 'HEAD, GET'], ['PATCH', '/api/v1/snapshots', 'HEAD, GET, POST'], ['OPTIONS', '/api/v1/snapshots', 'HEAD, GET, POST'],
      ['POST', `/api/v1/snapshots/${id}`, 'HEAD, GET, DELETE'], ['DELETE', '/api/v1/snapstoremappings', 'HEAD, GET, POST'],
      ['POST', '/api/v1/systeminfo', 'HEAD, GET'], ['PUT', `/api/v1/snapshots/${id}/consume/vda`, 'HEAD, GET'],
      ['DELETE', '/api/v1/snapshots/nosuch/changes/vda/', 'HEAD, GET'],
    ];
    for (const [method, path, allow] of attempts) {
      const response = await server.request(path, { method });
      assertError(response, 405, 'Method Not Allowed', new RegExp(`^${method} is not served here; this path takes ${allow}$`));
      assert.equal(response.headers.allow, allow, `${method} ${path}`);
    }
    assert.equal(service.snapshots.size, 1, 'nothing was deleted or created');
  });

  test('HEAD is answered wherever GET is: the same status and headers, no body', async () => {
    const id = await createSnapshot();
    for (const path of ['/api/v1/disks', '/api/v1/snapshots/', `/api/v1/snapshots/${id}`, '/api/v1/snapstores', '/api/v1/snapshots/1', '/api/v1/nothing']) {
      const [head, full] = [await server.request(path, { method: 'HEAD' }), await get(path)];
      assert.equal(head.status, full.status, `HEAD ${path}`);
      assert.equal(head.headers['content-type'], full.headers['content-type'], `HEAD ${path}`);
      assert.equal(head.headers['content-length'], full.headers['content-length'], `HEAD ${path}`);
      assert.equal(head.body.length, 0);
    }
  });
});
