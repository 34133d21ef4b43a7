// The snapshot lifecycle suite against each real module the VM has loaded: its origin disks, and
// snapstore files on an ext4 filesystem on its store disk.
import { lifecycleSuite } from '../snapshots/lifecycle-suite';
import { lifecycleMachine, MODULE_KINDS, moduleSkipReason } from './modules';

for (const kind of MODULE_KINDS) lifecycleSuite(kind, () => lifecycleMachine(kind), { skip: moduleSkipReason(kind) });
