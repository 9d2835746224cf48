// The shared check of the "unknown options are refused" tests: a factory made with correct
// options, and with a misspelt one added, as it is called in each area's table.
import { expect } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'

/**
 * Calls `make` with no extra option, with an undefined stray one (a spread of defaults, which
 * must be accepted), and with `misspelt` added: that call must throw or reject with
 * `InvalidOptionError` (`INVALID_OPTION`) naming `${prefix}.<the misspelt key>`.
 */
export async function expectUnknownOptionRefused(
  make: (extra: object) => unknown,
  prefix: string,
  misspelt: Record<string, unknown>,
): Promise<void> {
  await make({})
  await make({ stray: undefined })
  const refused = await optionRefusal(() => make(misspelt))
  const [key] = Object.keys(misspelt)
  expect(refused.option).toBe(`${prefix}.${key}`)
}

/**
 * The `InvalidOptionError` (`INVALID_OPTION`) that `run` throws or rejects with; fails the test
 * when it settles otherwise. For tables that check more of the refusal (its message).
 */
export async function optionRefusal(run: () => unknown): Promise<InvalidOptionError> {
  const error = await Promise.resolve()
    .then(run)
    .catch((e: unknown) => e)
  expect(error).toBeInstanceOf(InvalidOptionError)
  expect(error).toMatchObject({ code: 'INVALID_OPTION' })
  return error as InvalidOptionError
}
