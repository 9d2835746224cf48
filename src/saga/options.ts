import { InvalidOptionError } from '../core/errors.js'
import { checkKnownOptions } from '../core/validate.js'

/**
 * The one check of every options object of breakwater/saga (a declaration, a step, its retry,
 * a function's options): {@link checkKnownOptions}, then a known option given as `null` is
 * refused with `InvalidOptionError` (`INVALID_OPTION`) naming `${prefix}.${key}`. Only
 * `undefined` means the default: read with `??`, `maxAttempts: null` silently retried three
 * times and `leaseMs: null` ran with the default lease, while `timeoutMs: null` was refused.
 * `data` names the fields that hold the caller's JSON rather than an option (a reply's
 * `payload`), where null is a value like any other.
 *
 * @example
 * ```ts
 * checkSagaOptions('options', options, startOptions)
 * ```
 */
export function checkSagaOptions(
  prefix: string,
  options: object,
  known: ReadonlySet<string>,
  data?: ReadonlySet<string>,
): void {
  checkKnownOptions(prefix, options, known)
  const record = options as Record<string, unknown>
  for (const key of known) {
    if (record[key] === null && data?.has(key) !== true)
      throw new InvalidOptionError(
        `${prefix}.${key}`,
        'a value, not null (leave the option out, or undefined, for its default)',
        null,
      )
  }
}
