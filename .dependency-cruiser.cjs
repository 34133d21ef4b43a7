// The layer rules of docs/architecture.md, checked by `npm run lint` (and so by `npm test` and
// CI): each room of src/ may import only the rooms listed for it, and nothing may form a cycle.
// A new import that breaks a rule fails the build; change the rule here and in the document
// together, or not at all.

/** Room -> the rooms it may import besides itself. */
const MAY_IMPORT = {
  core: [],
  native: ['core'],
  host: ['core', 'native'],
  engine: ['core', 'native', 'host'],
  db: ['core', 'engine'],
  storage: ['core', 'native', 'host'],
  metrics: ['core'],
  doors: ['core'],
  config: ['core', 'doors', 'native'],
  watchers: ['core', 'native', 'db', 'engine', 'metrics', 'storage'],
  exports: ['core', 'db', 'engine'],
  snapshots: ['core', 'db', 'engine', 'exports', 'watchers'],
  inventory: ['core', 'db', 'engine', 'storage', 'host', 'config'],
  api: ['core', 'doors', 'exports', 'metrics', 'snapshots', 'inventory', 'storage', 'host', 'native'],
  nbd: ['core', 'doors', 'exports', 'metrics', 'native', 'snapshots'],
  agent: ['core', 'native', 'host', 'engine', 'db', 'storage', 'metrics', 'doors', 'config', 'watchers', 'exports', 'snapshots',
    'inventory', 'api', 'nbd'],
  pull: ['core', 'native', 'exports'],
  cli: ['core', 'native', 'config', 'agent', 'pull', 'cli-entry'],
};

const rooms = Object.keys(MAY_IMPORT);

const layerRules = rooms.map((room) => ({
  name: `${room}-imports`,
  comment: `src/${room}/ may import only ${MAY_IMPORT[room].join(', ') || 'node and packages'} (docs/architecture.md)`,
  severity: 'error',
  from: { path: `^src/${room}/` },
  to: {
    path: '^src/',
    pathNot: [`^src/(${[room, ...MAY_IMPORT[room]].join('|')})/`, ...(MAY_IMPORT[room].includes('cli-entry') ? ['^src/main\\.ts$'] : [])],
  },
}));

module.exports = {
  forbidden: [
    ...layerRules,
    {
      name: 'no-cycles',
      comment: 'Imports point one way: a cycle means two rooms own one concept.',
      severity: 'error',
      from: {},
      to: { circular: true },
    },
    {
      name: 'every-room-known',
      comment: 'A new folder under src/ needs its place in the layer rules and in docs/architecture.md.',
      severity: 'error',
      from: { path: '^src/', pathNot: [`^src/(${rooms.join('|')})/`, '^src/main\\.ts$'] },
      to: {},
    },
    {
      name: 'every-room-known-even-alone',
      comment: 'The same, for a file in a new folder that imports nothing.',
      severity: 'error',
      from: { orphan: true, path: '^src/', pathNot: [`^src/(${rooms.join('|')})/`, '^src/main\\.ts$'] },
      to: {},
    },
    {
      name: 'main-imports',
      comment: 'src/main.ts dispatches commands: it imports the CLI, the agent, the config and the core.',
      severity: 'error',
      from: { path: '^src/main\\.ts$' },
      to: { path: '^src/', pathNot: '^src/(cli|agent|config|core)/' },
    },
    {
      name: 'src-not-test',
      comment: 'The product never imports its tests or benchmarks.',
      severity: 'error',
      from: { path: '^src/' },
      to: { path: '^(test|bench)/' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    exclude: { path: '^(dist|build|node_modules)/' },
  },
};
