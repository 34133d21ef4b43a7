// The engine conformance suite against each real module the VM has loaded (VEEAMSNAP_KO,
// BLKSNAP_KO): the same suite the simulated engine passes in CI.
import { engineConformance } from '../engine/conformance';
import { conformanceTarget, MODULE_KINDS, moduleSkipReason } from './modules';

for (const kind of MODULE_KINDS) engineConformance(kind, () => conformanceTarget(kind), { skip: moduleSkipReason(kind) });
