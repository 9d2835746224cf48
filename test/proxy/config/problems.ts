// Shared by the config tests that only need the loader's refusal text.
import { expect } from 'vitest'
import { ConfigInvalidError, parseProxyConfig } from '../../../src/proxy/config/index.js'

/**
 * Parses `yaml` and returns the message of the ConfigInvalidError it must be refused with; fails
 * the test if the file is accepted or refused with any other error.
 */
export function problemsOf(yaml: string): string {
  try {
    parseProxyConfig(yaml, 'test.yaml')
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigInvalidError)
    return (error as Error).message
  }
  throw new Error('expected the config to be rejected')
}
