// A command line the CLI cannot run: main.ts prints it with the command's usage text and
// exits 2. Like api/errors.ts's HttpError, it exists only at this edge.
export class UsageError extends Error {
  override name = 'UsageError';
}

/** parseArgs's own refusals (unknown or malformed options) are usage errors too. */
export function isUsageError(err: unknown): boolean {
  return err instanceof UsageError || ['ERR_PARSE_ARGS_UNKNOWN_OPTION', 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE',
    'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL'].includes((err as { code?: string }).code ?? '');
}
