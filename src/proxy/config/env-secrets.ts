// Secrets a config reads from environment variables (`{ env: NAME }`). A variable cannot be set
// later in a running process, so one that is unset, empty, or holds what no header can carry
// is a configuration error: refused by `--check`, at start and by a reload, instead of being a
// warning while requests to the service go without the credential (answered 401 for ever) or
// the admin API refuses every request. A `{ file }` credential is not judged here: a file may
// be rotated into place later (files.ts, unusableFiles, says what `--check` finds of it).

import type { ProxyConfig, SecretSource } from '../contracts.js'
import { ConfigInvalidError, type ConfigProblem } from './errors.js'
import { adminTokenProblem, secretProblem } from './files.js'

/** Environment variables by name, as `process.env`. */
type Environment = Readonly<Record<string, string | undefined>>

/** Where a config's `{ env }` secrets are read. */
export interface SecretEnvironments {
  /** Where the services' outbound credentials are read (the proxy reads `process.env`). */
  readonly services: Environment
  /**
   * Where the admin token is read, or undefined when this process serves no admin API (a
   * worker of a multi-process proxy: its primary checks the token).
   */
  readonly admin: Environment | undefined
}

/**
 * The problems of `config`'s `{ env }` secrets in `environments`, one per secret whose variable
 * is unset, empty (or whitespace only), or holds a line break or control character (for the
 * admin token: anything but one word of visible ASCII, see {@link adminTokenProblem}). Each
 * names the config path (`services.orders.auth.bearer.env`) and the variable; never its value.
 *
 * @example
 * ```ts
 * envSecretProblems(config, { services: process.env, admin: process.env })
 * // [{ path: 'services.orders.auth.bearer.env', message: 'environment variable ORDERS_TOKEN: not set: ...' }]
 * ```
 */
export function envSecretProblems(
  config: ProxyConfig,
  environments: SecretEnvironments,
): ConfigProblem[] {
  const problems: ConfigProblem[] = []
  const judge = (
    path: string,
    source: SecretSource | undefined,
    env: Environment,
    problemOf: (text: string) => string | undefined,
    unsetEffect: string,
  ): void => {
    if (source === undefined || !('env' in source)) return
    const value = env[source.env]
    const reason = value === undefined ? `not set: ${unsetEffect}` : problemOf(value)
    if (reason === undefined) return
    problems.push({
      path: `${path}.env`,
      message: `environment variable ${source.env}: ${reason}`,
      line: undefined,
      column: undefined,
    })
  }
  for (const [name, service] of config.services) {
    const auth = service.auth
    const noCredential = 'requests would go without the credential'
    if (auth?.kind === 'bearer')
      judge(
        `services.${name}.auth.bearer`,
        auth.token,
        environments.services,
        secretProblem,
        noCredential,
      )
    else if (auth?.kind === 'api-key')
      judge(
        `services.${name}.auth.apiKey`,
        auth.key,
        environments.services,
        secretProblem,
        noCredential,
      )
  }
  if (environments.admin !== undefined)
    judge(
      'admin.token',
      config.admin?.token,
      environments.admin,
      adminTokenProblem,
      'every /admin/ request would be refused',
    )
  return problems
}

/**
 * Refuses, as {@link ConfigInvalidError} (code `CONFIG_INVALID`) from `source`, a config with
 * any of the problems {@link envSecretProblems} finds. Called by `--check`, at start before
 * anything is bound, and on each reload (which is then refused, the config in force kept).
 *
 * @example
 * ```ts
 * checkEnvSecrets(config, 'breakwater.yaml', { services: process.env, admin: process.env })
 * ```
 */
export function checkEnvSecrets(
  config: ProxyConfig,
  source: string,
  environments: SecretEnvironments,
): void {
  const problems = envSecretProblems(config, environments)
  if (problems.length > 0) throw new ConfigInvalidError(source, problems)
}
