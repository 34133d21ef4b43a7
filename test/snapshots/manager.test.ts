import { simulatedMachine } from './helpers/env';
import { lifecycleSuite } from './lifecycle-suite';

lifecycleSuite('simulated', () => simulatedMachine());
