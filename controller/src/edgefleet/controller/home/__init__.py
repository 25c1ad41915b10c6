"""The operator's edgefleet home: settings and ``config.toml``, device profiles, the
signing key, files written privately, and :class:`Home`, which opens the registry and
the artifact store for every other part."""

from ._files import write_private
from ._home import (
    AppliedMigration,
    Home,
    InitReport,
    UpgradeReport,
    available_profiles,
    init_home,
    open_home,
    upgrade_home,
)
from ._keys import key_path, make_home_key_current, read_key, write_new_key
from ._profiles import (
    Budgets,
    Compression,
    DeviceProfile,
    builtin_profiles_dir,
    get_profile,
    load_profile,
    load_profiles,
    record_profile,
)
from ._settings import (
    CONTROLLER_USER,
    HOME_ENV,
    Settings,
    config_text,
    load_settings,
    toml_value,
    with_controller_login,
)
from ._tls import TlsFiles, ensure_tls, existing_tls

__all__ = [
    "CONTROLLER_USER",
    "HOME_ENV",
    "AppliedMigration",
    "Budgets",
    "Compression",
    "DeviceProfile",
    "Home",
    "InitReport",
    "Settings",
    "TlsFiles",
    "UpgradeReport",
    "available_profiles",
    "builtin_profiles_dir",
    "config_text",
    "ensure_tls",
    "existing_tls",
    "get_profile",
    "init_home",
    "key_path",
    "load_profile",
    "load_profiles",
    "load_settings",
    "make_home_key_current",
    "open_home",
    "read_key",
    "record_profile",
    "toml_value",
    "upgrade_home",
    "with_controller_login",
    "write_new_key",
    "write_private",
]
