// An engine's memory kept as the agent keeps it: in the agent database under `dir`. Engines made
// on the same directory share it, as an agent and the agent that restarts after it do.
import path from 'node:path';
import { AgentState } from '../../src/db/state';
import type { EngineMemory } from '../../src/engine/types';

export function engineMemory(dir: string, engine: 'veeamsnap' | 'blksnap'): EngineMemory {
  return AgentState.open(path.join(dir, 'agent.db')).engineMemory(engine);
}
