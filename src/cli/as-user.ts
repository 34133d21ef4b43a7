// Runs a command of the agent as another user, for `check-config --as-user`: started as root
// with the user's name, uid and gid, it takes the user's groups (initgroups, as login and
// systemd do), drops to the user for good, then runs the command. Only checks made by the
// user's own process see what the service will see: root passes every access check.
//   node as-user.js NAME UID GID COMMAND [ARGS...]
import { main } from '../main';

async function runAs(argv: string[]): Promise<number> {
  const [name, uid, gid, ...command] = argv;
  if (name === undefined || uid === undefined || gid === undefined || command.length === 0) {
    process.stderr.write('usage: as-user.js NAME UID GID COMMAND [ARGS...]\n');
    return 2;
  }
  // Present on POSIX, missing from @types/node 20.
  (process as unknown as { initgroups(user: string, extraGroup: number): void }).initgroups(name, Number(gid));
  process.setgid!(Number(gid));
  process.setuid!(Number(uid));
  return main(command);
}

if (require.main === module) {
  void runAs(process.argv.slice(2)).then((status) => {
    process.exitCode = status;
  });
}
