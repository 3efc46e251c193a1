# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_batv_global_optspecs
    string join \n config= keys= now= h/help V/version
end

function __fish_batv_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_batv_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_batv_using_subcommand
    set -l cmd (__fish_batv_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c batv -n "__fish_batv_needs_command" -l config -d 'Configuration file [default: /etc/batv/batv.toml; batv.toml in a source checkout]' -r -F
complete -c batv -n "__fish_batv_needs_command" -l keys -d 'Keys directory [default: keys_dir from the config, else /etc/batv/keys; keys/ in a source checkout]' -r -F
complete -c batv -n "__fish_batv_needs_command" -l now -d 'Evaluate as of this time: RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD (UTC)' -r
complete -c batv -n "__fish_batv_needs_command" -s h -l help -d 'Print help'
complete -c batv -n "__fish_batv_needs_command" -s V -l version -d 'Print version'
complete -c batv -n "__fish_batv_needs_command" -f -a "sign" -d 'Print tagged addresses'
complete -c batv -n "__fish_batv_needs_command" -f -a "verify" -d 'Check tags: print the original address of each valid one'
complete -c batv -n "__fish_batv_needs_command" -f -a "strip" -d 'Print addresses without their tag (no check)'
complete -c batv -n "__fish_batv_needs_command" -f -a "check" -d 'Is a message (on stdin) backscatter? For procmail, maildrop, Sieve and Postfix pipe'
complete -c batv -n "__fish_batv_needs_command" -f -a "keys" -d 'Manage the signing keys'
complete -c batv -n "__fish_batv_needs_command" -f -a "config" -d 'Validate or print the configuration'
complete -c batv -n "__fish_batv_needs_command" -f -a "sendmail" -d 'The sendmail wrapper: sign the envelope sender, then run the real sendmail'
complete -c batv -n "__fish_batv_needs_command" -f -a "proxy" -d 'The SMTP proxy: refuse backscatter during the SMTP session, strip valid tags'
complete -c batv -n "__fish_batv_needs_command" -f -a "daemon" -d 'Postfix socketmap (sign, strip) and policy service, and Exim ${readsocket}'
complete -c batv -n "__fish_batv_needs_command" -f -a "milter" -d 'A milter: sign, verify and strip inside Sendmail, Postfix or any milter MTA'
complete -c batv -n "__fish_batv_using_subcommand sign" -l scheme -d 'Tag scheme [default: scheme from the config, else native]' -r
complete -c batv -n "__fish_batv_using_subcommand sign" -l syntax -d 'Where the tag goes: prefix (prvs=...=alice@example.com) or subaddress (alice+prvs=...@example.com, with subaddress_delimiter) [default: tag_syntax from the config, else prefix]' -r
complete -c batv -n "__fish_batv_using_subcommand sign" -l key -d 'Sign with this key id (0-9) instead of the active key' -r
complete -c batv -n "__fish_batv_using_subcommand sign" -l config -d 'Configuration file [default: /etc/batv/batv.toml; batv.toml in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand sign" -l keys -d 'Keys directory [default: keys_dir from the config, else /etc/batv/keys; keys/ in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand sign" -l now -d 'Evaluate as of this time: RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD (UTC)' -r
complete -c batv -n "__fish_batv_using_subcommand sign" -s h -l help -d 'Print help'
complete -c batv -n "__fish_batv_using_subcommand verify" -l config -d 'Configuration file [default: /etc/batv/batv.toml; batv.toml in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand verify" -l keys -d 'Keys directory [default: keys_dir from the config, else /etc/batv/keys; keys/ in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand verify" -l now -d 'Evaluate as of this time: RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD (UTC)' -r
complete -c batv -n "__fish_batv_using_subcommand verify" -l json -d 'Print one JSON object per address on stdout instead'
complete -c batv -n "__fish_batv_using_subcommand verify" -s h -l help -d 'Print help'
complete -c batv -n "__fish_batv_using_subcommand strip" -l config -d 'Configuration file [default: /etc/batv/batv.toml; batv.toml in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand strip" -l keys -d 'Keys directory [default: keys_dir from the config, else /etc/batv/keys; keys/ in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand strip" -l now -d 'Evaluate as of this time: RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD (UTC)' -r
complete -c batv -n "__fish_batv_using_subcommand strip" -s h -l help -d 'Print help'
complete -c batv -n "__fish_batv_using_subcommand check" -l sender -d 'The message\'s envelope sender (\\"\\" for the null sender), if known' -r
complete -c batv -n "__fish_batv_using_subcommand check" -l recipient -d 'The message\'s envelope recipient [default: the topmost X-Original-To, Delivered-To or Envelope-to]' -r
complete -c batv -n "__fish_batv_using_subcommand check" -l config -d 'Configuration file [default: /etc/batv/batv.toml; batv.toml in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand check" -l keys -d 'Keys directory [default: keys_dir from the config, else /etc/batv/keys; keys/ in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand check" -l now -d 'Evaluate as of this time: RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD (UTC)' -r
complete -c batv -n "__fish_batv_using_subcommand check" -l add-header -d 'Write the message back with an X-BATV: header in front; always exit 0'
complete -c batv -n "__fish_batv_using_subcommand check" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c batv -n "__fish_batv_using_subcommand keys; and not __fish_seen_subcommand_from init list add activate rotate retire prune import show" -l domain -d 'Manage the [domain_keys] store of this domain instead of keys_dir' -r
complete -c batv -n "__fish_batv_using_subcommand keys; and not __fish_seen_subcommand_from init list add activate rotate retire prune import show" -l config -d 'Configuration file [default: /etc/batv/batv.toml; batv.toml in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand keys; and not __fish_seen_subcommand_from init list add activate rotate retire prune import show" -l keys -d 'Keys directory [default: keys_dir from the config, else /etc/batv/keys; keys/ in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand keys; and not __fish_seen_subcommand_from init list add activate rotate retire prune import show" -l now -d 'Evaluate as of this time: RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD (UTC)' -r
complete -c batv -n "__fish_batv_using_subcommand keys; and not __fish_seen_subcommand_from init list add activate rotate retire prune import show" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c batv -n "__fish_batv_using_subcommand keys; and not __fish_seen_subcommand_from init list add activate rotate retire prune import show" -f -a "init" -d 'Create the keys directory and a first active key, unless keys exist'
complete -c batv -n "__fish_batv_using_subcommand keys; and not __fish_seen_subcommand_from init list add activate rotate retire prune import show" -f -a "list" -d 'List keys: id, state, times, fingerprint (never the secret)'
complete -c batv -n "__fish_batv_using_subcommand keys; and not __fish_seen_subcommand_from init list add activate rotate retire prune import show" -f -a "add" -d 'Add a new key and make it active (the previous active key is retired)'
complete -c batv -n "__fish_batv_using_subcommand keys; and not __fish_seen_subcommand_from init list add activate rotate retire prune import show" -f -a "activate" -d 'Make key ID the signing key; the previously active key is retired'
complete -c batv -n "__fish_batv_using_subcommand keys; and not __fish_seen_subcommand_from init list add activate rotate retire prune import show" -f -a "rotate" -d 'Add a new key and activate it in one step (single host)'
complete -c batv -n "__fish_batv_using_subcommand keys; and not __fish_seen_subcommand_from init list add activate rotate retire prune import show" -f -a "retire" -d 'Retire a standby key (to retire the active key, activate another)'
complete -c batv -n "__fish_batv_using_subcommand keys; and not __fish_seen_subcommand_from init list add activate rotate retire prune import show" -f -a "prune" -d 'Delete keys retired more than 32 days ago'
complete -c batv -n "__fish_batv_using_subcommand keys; and not __fish_seen_subcommand_from init list add activate rotate retire prune import show" -f -a "import" -d 'Import a secret (16-64 bytes, one trailing newline stripped unless --raw) as standby key ID'
complete -c batv -n "__fish_batv_using_subcommand keys; and not __fish_seen_subcommand_from init list add activate rotate retire prune import show" -f -a "show" -d 'Show one key; the secret only with --secret'
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from init" -l domain -d 'Manage the [domain_keys] store of this domain instead of keys_dir' -r
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from init" -l config -d 'Configuration file [default: /etc/batv/batv.toml; batv.toml in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from init" -l keys -d 'Keys directory [default: keys_dir from the config, else /etc/batv/keys; keys/ in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from init" -l now -d 'Evaluate as of this time: RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD (UTC)' -r
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from init" -s h -l help -d 'Print help'
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from list" -l domain -d 'Manage the [domain_keys] store of this domain instead of keys_dir' -r
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from list" -l config -d 'Configuration file [default: /etc/batv/batv.toml; batv.toml in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from list" -l keys -d 'Keys directory [default: keys_dir from the config, else /etc/batv/keys; keys/ in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from list" -l now -d 'Evaluate as of this time: RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD (UTC)' -r
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from add" -l domain -d 'Manage the [domain_keys] store of this domain instead of keys_dir' -r
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from add" -l config -d 'Configuration file [default: /etc/batv/batv.toml; batv.toml in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from add" -l keys -d 'Keys directory [default: keys_dir from the config, else /etc/batv/keys; keys/ in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from add" -l now -d 'Evaluate as of this time: RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD (UTC)' -r
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from add" -l standby -d 'Add it in standby instead: it verifies but does not sign until activated'
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help'
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from activate" -l domain -d 'Manage the [domain_keys] store of this domain instead of keys_dir' -r
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from activate" -l config -d 'Configuration file [default: /etc/batv/batv.toml; batv.toml in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from activate" -l keys -d 'Keys directory [default: keys_dir from the config, else /etc/batv/keys; keys/ in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from activate" -l now -d 'Evaluate as of this time: RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD (UTC)' -r
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from activate" -s h -l help -d 'Print help'
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from rotate" -l domain -d 'Manage the [domain_keys] store of this domain instead of keys_dir' -r
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from rotate" -l config -d 'Configuration file [default: /etc/batv/batv.toml; batv.toml in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from rotate" -l keys -d 'Keys directory [default: keys_dir from the config, else /etc/batv/keys; keys/ in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from rotate" -l now -d 'Evaluate as of this time: RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD (UTC)' -r
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from rotate" -s h -l help -d 'Print help'
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from retire" -l domain -d 'Manage the [domain_keys] store of this domain instead of keys_dir' -r
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from retire" -l config -d 'Configuration file [default: /etc/batv/batv.toml; batv.toml in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from retire" -l keys -d 'Keys directory [default: keys_dir from the config, else /etc/batv/keys; keys/ in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from retire" -l now -d 'Evaluate as of this time: RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD (UTC)' -r
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from retire" -s h -l help -d 'Print help'
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from prune" -l domain -d 'Manage the [domain_keys] store of this domain instead of keys_dir' -r
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from prune" -l config -d 'Configuration file [default: /etc/batv/batv.toml; batv.toml in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from prune" -l keys -d 'Keys directory [default: keys_dir from the config, else /etc/batv/keys; keys/ in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from prune" -l now -d 'Evaluate as of this time: RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD (UTC)' -r
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from prune" -s h -l help -d 'Print help'
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from import" -l secret-file -d 'Read the secret from this file' -r -F
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from import" -l domain -d 'Manage the [domain_keys] store of this domain instead of keys_dir' -r
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from import" -l config -d 'Configuration file [default: /etc/batv/batv.toml; batv.toml in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from import" -l keys -d 'Keys directory [default: keys_dir from the config, else /etc/batv/keys; keys/ in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from import" -l now -d 'Evaluate as of this time: RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD (UTC)' -r
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from import" -l secret-stdin -d 'Read the secret from standard input'
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from import" -l raw -d 'Take the bytes exactly as they are, a trailing newline included (batv-tools keys are 64 raw bytes)'
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from import" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from show" -l domain -d 'Manage the [domain_keys] store of this domain instead of keys_dir' -r
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from show" -l config -d 'Configuration file [default: /etc/batv/batv.toml; batv.toml in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from show" -l keys -d 'Keys directory [default: keys_dir from the config, else /etc/batv/keys; keys/ in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from show" -l now -d 'Evaluate as of this time: RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD (UTC)' -r
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from show" -l secret -d 'Also print the secret'
complete -c batv -n "__fish_batv_using_subcommand keys; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c batv -n "__fish_batv_using_subcommand config; and not __fish_seen_subcommand_from check show" -l config -d 'Configuration file [default: /etc/batv/batv.toml; batv.toml in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand config; and not __fish_seen_subcommand_from check show" -l keys -d 'Keys directory [default: keys_dir from the config, else /etc/batv/keys; keys/ in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand config; and not __fish_seen_subcommand_from check show" -l now -d 'Evaluate as of this time: RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD (UTC)' -r
complete -c batv -n "__fish_batv_using_subcommand config; and not __fish_seen_subcommand_from check show" -s h -l help -d 'Print help'
complete -c batv -n "__fish_batv_using_subcommand config; and not __fish_seen_subcommand_from check show" -f -a "check" -d 'Validate the configuration file (exit 78 naming file, line and key if it is wrong)'
complete -c batv -n "__fish_batv_using_subcommand config; and not __fish_seen_subcommand_from check show" -f -a "show" -d 'Print the effective configuration (file values over defaults) as TOML'
complete -c batv -n "__fish_batv_using_subcommand config; and __fish_seen_subcommand_from check" -l config -d 'Configuration file [default: /etc/batv/batv.toml; batv.toml in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand config; and __fish_seen_subcommand_from check" -l keys -d 'Keys directory [default: keys_dir from the config, else /etc/batv/keys; keys/ in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand config; and __fish_seen_subcommand_from check" -l now -d 'Evaluate as of this time: RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD (UTC)' -r
complete -c batv -n "__fish_batv_using_subcommand config; and __fish_seen_subcommand_from check" -s h -l help -d 'Print help'
complete -c batv -n "__fish_batv_using_subcommand config; and __fish_seen_subcommand_from show" -l config -d 'Configuration file [default: /etc/batv/batv.toml; batv.toml in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand config; and __fish_seen_subcommand_from show" -l keys -d 'Keys directory [default: keys_dir from the config, else /etc/batv/keys; keys/ in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand config; and __fish_seen_subcommand_from show" -l now -d 'Evaluate as of this time: RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD (UTC)' -r
complete -c batv -n "__fish_batv_using_subcommand config; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c batv -n "__fish_batv_using_subcommand sendmail" -l config -d 'Configuration file [default: /etc/batv/batv.toml; batv.toml in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand sendmail" -l keys -d 'Keys directory [default: keys_dir from the config, else /etc/batv/keys; keys/ in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand sendmail" -l now -d 'Evaluate as of this time: RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD (UTC)' -r
complete -c batv -n "__fish_batv_using_subcommand proxy" -l listen -d 'Listen here instead of proxy.listen' -r
complete -c batv -n "__fish_batv_using_subcommand proxy" -l forward -d 'Forward to this MTA instead of proxy.forward' -r
complete -c batv -n "__fish_batv_using_subcommand proxy" -l config -d 'Configuration file [default: /etc/batv/batv.toml; batv.toml in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand proxy" -l keys -d 'Keys directory [default: keys_dir from the config, else /etc/batv/keys; keys/ in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand proxy" -l now -d 'Evaluate as of this time: RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD (UTC)' -r
complete -c batv -n "__fish_batv_using_subcommand proxy" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c batv -n "__fish_batv_using_subcommand daemon" -l listen -d 'Listen here instead of daemon.listen: unix:/PATH or inet:127.0.0.1:PORT (repeatable)' -r
complete -c batv -n "__fish_batv_using_subcommand daemon" -l config -d 'Configuration file [default: /etc/batv/batv.toml; batv.toml in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand daemon" -l keys -d 'Keys directory [default: keys_dir from the config, else /etc/batv/keys; keys/ in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand daemon" -l now -d 'Evaluate as of this time: RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD (UTC)' -r
complete -c batv -n "__fish_batv_using_subcommand daemon" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c batv -n "__fish_batv_using_subcommand milter" -l listen -d 'Listen here instead of milter.listen: unix:/PATH or inet:127.0.0.1:PORT (repeatable)' -r
complete -c batv -n "__fish_batv_using_subcommand milter" -l config -d 'Configuration file [default: /etc/batv/batv.toml; batv.toml in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand milter" -l keys -d 'Keys directory [default: keys_dir from the config, else /etc/batv/keys; keys/ in a source checkout]' -r -F
complete -c batv -n "__fish_batv_using_subcommand milter" -l now -d 'Evaluate as of this time: RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD (UTC)' -r
complete -c batv -n "__fish_batv_using_subcommand milter" -s h -l help -d 'Print help (see more with \'--help\')'
