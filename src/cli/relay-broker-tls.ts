// `breakwater relay`'s broker TLS settings: the CA, the client certificate and its key as files
// (flags, or environment variables as --broker and BREAKWATER_BROKER_URL are paired), and the
// key's passphrase from an environment variable or a file, never an argument (it would show in
// ps and shell history). The broker adapter reads and checks the files (src/brokers/tls.ts);
// this module refuses what the command line alone shows to be wrong, and words the adapter's
// refusals in terms of the flag or variable and the path the user gave.
import { readFileSync } from 'node:fs'
import type { BrokerTlsOptions } from '../brokers/index.js'
import { InvalidOptionError } from '../core/errors.js'
import { flagOrEnv, type Setting } from './process-support.js'
import { UsageError } from './usage.js'

/** The environment variable holding the key's passphrase unless `--broker-key-passphrase-env` names another. */
export const defaultPassphraseEnv = 'BREAKWATER_BROKER_KEY_PASSPHRASE'

/** The value flags of the broker TLS settings. */
export const brokerTlsValueFlags: readonly string[] = [
  '--broker-ca-file',
  '--broker-cert-file',
  '--broker-key-file',
  '--broker-key-passphrase-env',
  '--broker-key-passphrase-file',
]

/** Flags a user may try to pass the passphrase itself with; refused, pointing at the right ones. */
export const passphraseArgumentFlags: readonly string[] = [
  '--broker-key-passphrase',
  '--broker-passphrase',
  '--key-passphrase',
  '--passphrase',
]

/** How to give the passphrase, for the refusal of {@link passphraseArgumentFlags}. */
export const passphraseFlagsHint = 'use --broker-key-passphrase-env or --broker-key-passphrase-file'

/** The help text of the flags, in the relay's options section. */
export const brokerTlsOptionsHelp = `  --broker-ca-file <f>       PEM file of the CA certificates that sign the broker's
                             certificate, trusted instead of Node's roots. The --broker-*
                             files need a broker over TLS: rediss://, amqps://, tls://, or
                             nats:// (which then requires TLS)
  --broker-cert-file <f>     PEM file of a client certificate, for a broker that requires
                             one (mutual TLS); needs --broker-key-file
  --broker-key-file <f>      PEM file of the client certificate's private key
  --broker-key-passphrase-env <var>
                             environment variable holding the passphrase of an encrypted
                             key (default ${defaultPassphraseEnv})
  --broker-key-passphrase-file <f>
                             file holding the passphrase of an encrypted key
`

/** The help text of the variables, in the relay's environment section. */
export const brokerTlsEnvironmentHelp = `  BREAKWATER_BROKER_CA_FILE, BREAKWATER_BROKER_CERT_FILE, BREAKWATER_BROKER_KEY_FILE
                             used when --broker-ca-file, --broker-cert-file or
                             --broker-key-file is not given
  ${defaultPassphraseEnv}
                             the key's passphrase (see --broker-key-passphrase-env)
`

/** Where the key's passphrase is read from. */
type PassphraseSource =
  | { readonly kind: 'env'; readonly name: string }
  | { readonly kind: 'file'; readonly path: string }

/** The broker TLS settings as given, each file with where it came from. */
export interface BrokerTlsArgs {
  readonly caFile: Setting | undefined
  readonly certFile: Setting | undefined
  readonly keyFile: Setting | undefined
  /** Where the passphrase comes from; undefined without a key. */
  readonly passphrase: PassphraseSource | undefined
}

/** The broker URL the settings go with, for the checks and their messages. */
export interface BrokerUrlArgs {
  /** The URL's scheme as shown: `redis://`, `sql:`. */
  readonly scheme: string
  /** Whether the broker is a webhook (http:// or https://). */
  readonly webhook: boolean
  /** Where the URL came from: `--broker` or `BREAKWATER_BROKER_URL`. */
  readonly source: string
}

/** URL schemes whose adapters take TLS settings; a `nats://` connection then requires TLS. */
const tlsSchemes = new Set(['rediss://', 'amqps://', 'tls://', 'nats://'])

/**
 * A file setting from its flag or else its environment variable; undefined when neither is set.
 * PEM text where the path belongs (a key mounted as a variable) is refused without showing it:
 * the adapter would refuse it as a missing file, and its message, like ours, shows the path.
 */
function fileSetting(
  values: ReadonlyMap<string, string>,
  env: Readonly<Record<string, string | undefined>>,
  flag: string,
  variable: string,
): Setting | undefined {
  const setting = flagOrEnv(values, flag, env, variable, '')
  if (/-----BEGIN|[\r\n]/.test(setting.value))
    throw new UsageError(`${setting.source} takes the path of a PEM file, not the PEM text itself`)
  return setting.value === '' ? undefined : setting
}

/**
 * Reads the broker TLS flags (and their variables) and refuses, with a `UsageError` naming the
 * flag or variable, what would be ignored or cannot work: settings for a broker URL without TLS
 * (the adapter would refuse them naming only its option), a certificate without its key or a
 * key without its certificate, a passphrase source without a key, both passphrase flags.
 * Returns undefined when no setting is given.
 */
export function parseBrokerTls(
  values: ReadonlyMap<string, string>,
  env: Readonly<Record<string, string | undefined>>,
  broker: BrokerUrlArgs,
): BrokerTlsArgs | undefined {
  const caFile = fileSetting(values, env, '--broker-ca-file', 'BREAKWATER_BROKER_CA_FILE')
  const certFile = fileSetting(values, env, '--broker-cert-file', 'BREAKWATER_BROKER_CERT_FILE')
  const keyFile = fileSetting(values, env, '--broker-key-file', 'BREAKWATER_BROKER_KEY_FILE')
  const passphraseEnv = values.get('--broker-key-passphrase-env')
  const passphraseFile = values.get('--broker-key-passphrase-file')
  const given = [
    caFile?.source,
    certFile?.source,
    keyFile?.source,
    passphraseEnv === undefined ? undefined : '--broker-key-passphrase-env',
    passphraseFile === undefined ? undefined : '--broker-key-passphrase-file',
  ].filter((source) => source !== undefined)
  const first = given[0]
  if (first === undefined) return undefined
  if (broker.webhook || !tlsSchemes.has(broker.scheme)) {
    const why = broker.webhook
      ? 'a webhook takes no TLS settings (NODE_EXTRA_CA_CERTS=<file> adds a CA for the whole process)'
      : `${broker.source} is ${broker.scheme}, which does not use TLS`
    throw new UsageError(
      `${first} applies only to a broker reached over TLS (rediss://, amqps://, tls:// or nats://); ${why}`,
    )
  }
  if (passphraseEnv !== undefined && passphraseFile !== undefined)
    throw new UsageError('--broker-key-passphrase-env or --broker-key-passphrase-file, not both')
  if (certFile !== undefined && keyFile === undefined)
    throw new UsageError(
      `${certFile.source} needs the private key too: --broker-key-file or BREAKWATER_BROKER_KEY_FILE`,
    )
  if (keyFile !== undefined && certFile === undefined)
    throw new UsageError(
      `${keyFile.source} needs the client certificate too: --broker-cert-file or BREAKWATER_BROKER_CERT_FILE`,
    )
  if (keyFile === undefined && (passphraseEnv !== undefined || passphraseFile !== undefined))
    throw new UsageError(
      `${passphraseEnv === undefined ? '--broker-key-passphrase-file' : '--broker-key-passphrase-env'} applies only with a key (--broker-key-file or BREAKWATER_BROKER_KEY_FILE)`,
    )
  // Not shown: what is no variable name may be the passphrase itself.
  if (passphraseEnv !== undefined && !/^[A-Za-z_][A-Za-z0-9_]*$/.test(passphraseEnv))
    throw new UsageError(
      '--broker-key-passphrase-env must name an environment variable (letters, digits and _), not hold the passphrase',
    )
  let passphrase: PassphraseSource | undefined
  if (keyFile !== undefined)
    passphrase =
      passphraseFile === undefined
        ? { kind: 'env', name: passphraseEnv ?? defaultPassphraseEnv }
        : { kind: 'file', path: passphraseFile }
  return { caFile, certFile, keyFile, passphrase }
}

/**
 * The adapter's `tls` option of `args`, with the passphrase read from its file or variable (an
 * empty variable is unset: the key may not be encrypted). A passphrase file that cannot be
 * read or is empty is a `UsageError` naming it. The PEM files are the adapter's to read.
 */
export function brokerTlsOption(
  args: BrokerTlsArgs,
  env: Readonly<Record<string, string | undefined>>,
): BrokerTlsOptions {
  let passphrase: string | undefined
  const from = args.passphrase
  if (from?.kind === 'file') {
    try {
      passphrase = readFileSync(from.path, 'utf8').replace(/\r?\n$/, '')
    } catch (error) {
      throw new UsageError(
        `--broker-key-passphrase-file: cannot read "${from.path}": ${(error as NodeJS.ErrnoException).code ?? 'error'}`,
      )
    }
    if (passphrase === '')
      throw new UsageError(`--broker-key-passphrase-file: "${from.path}" is empty`)
  } else if (from?.kind === 'env') {
    passphrase = env[from.name] === '' ? undefined : env[from.name]
  }
  return {
    ...(args.caFile === undefined ? {} : { caFile: args.caFile.value }),
    ...(args.certFile === undefined ? {} : { certFile: args.certFile.value }),
    ...(args.keyFile === undefined ? {} : { keyFile: args.keyFile.value }),
    ...(passphrase === undefined ? {} : { passphrase }),
  }
}

/**
 * The adapter's refusal of a TLS setting (`redis.tls.keyFile: expected ...`) as the relay's
 * user should read it: naming the flag or variable and the whole path (the adapter shortens a
 * long one), and for the passphrase where it came from, never its value. Undefined for another
 * error, which the caller words as it does any refusal of the broker's settings.
 */
export function brokerTlsRefusal(
  error: unknown,
  args: BrokerTlsArgs,
  tls: BrokerTlsOptions,
): string | undefined {
  if (!(error instanceof InvalidOptionError)) return undefined
  const name = /\.tls\.(caFile|certFile|keyFile|passphrase)$/.exec(error.option)?.[1]
  if (name === 'passphrase') {
    const key = args.keyFile
    if (key === undefined) return undefined
    const keyShown = `${key.source} "${key.value}"`
    const from = args.passphrase
    if (tls.passphrase === undefined) {
      const variable = from?.kind === 'env' ? from.name : defaultPassphraseEnv
      return `${key.source}: "${key.value}" is an encrypted key: set its passphrase in ${variable} or pass --broker-key-passphrase-file`
    }
    const passShown =
      from?.kind === 'file' ? `--broker-key-passphrase-file "${from.path}"` : (from?.name ?? '')
    return `the passphrase in ${passShown} does not decrypt ${keyShown}`
  }
  const setting =
    name === 'caFile'
      ? args.caFile
      : name === 'certFile'
        ? args.certFile
        : name === 'keyFile'
          ? args.keyFile
          : undefined
  if (setting === undefined) return undefined
  // The option and the value, which the adapter's message cuts short past 60 characters, are
  // replaced by the setting's name and whole path.
  return `${setting.source}: expected ${error.expected}, got "${setting.value}"`
}
