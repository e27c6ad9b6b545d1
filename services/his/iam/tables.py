"""The iam schema: departments, staff, their department memberships, emergency access grants,
patient sign-ins and the attempts their rate limits count."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID

from his.base.identity import STAFF_ROLES
from his.runtime.outbox import declare as declare_outbox

SCHEMA = "iam"
metadata = MetaData(schema=SCHEMA)

APPROVAL_STATES = ("pending", "approved", "rejected")
APPROVAL_RULES = ("two_person", "setup", "demo_seed")
DEPARTMENT_KINDS = ("outpatient", "inpatient", "emergency", "surgery", "lab", "pharmacy", "admin")


def _quoted(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{value}'" for value in values)


departments = Table(
    "departments",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("code", Text, nullable=False),
    Column("display_name", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("create_request_id", Text, unique=True),
    Column("create_request_fingerprint", Text),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("code", name="department_code_unique"),
    CheckConstraint(f"kind IN ({_quoted(DEPARTMENT_KINDS)})", name="department_kind_known"),
    CheckConstraint("code ~ '^[A-Z0-9-]{1,20}$'", name="department_code_format"),
    CheckConstraint(
        "(create_request_id IS NULL) = (create_request_fingerprint IS NULL)",
        name="department_request_fingerprinted",
    ),
)

staff = Table(
    "staff",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("username", Text, nullable=False),
    Column("display_name", Text, nullable=False),
    # Lower-cased by PostgreSQL, so prefix search and stored key can never disagree.
    Column("display_key", Text, Computed("lower(display_name)", persisted=True), nullable=False),
    # Role names exactly as the `roles` token claim carries them (`DOCTOR`, ...).
    Column("roles", ARRAY(Text), nullable=False),
    Column("practitioner_id_system", Text),
    Column("practitioner_id_value", Text),
    Column("active", Boolean, nullable=False, server_default=text("true")),
    Column("create_request_id", Text, unique=True),
    Column("create_request_fingerprint", Text),
    Column("version", Integer, nullable=False, server_default="1"),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("username", name="staff_username_unique"),
    UniqueConstraint(
        "practitioner_id_system", "practitioner_id_value", name="staff_practitioner_unique"
    ),
    CheckConstraint("username ~ '^[a-z][a-z0-9._-]{2,63}$'", name="staff_username_format"),
    # No role at all: a new staff member, until a second administrator approves their roles.
    CheckConstraint(f"roles <@ ARRAY[{_quoted(STAFF_ROLES)}]::text[]", name="staff_roles_known"),
    CheckConstraint(
        "(practitioner_id_system IS NULL) = (practitioner_id_value IS NULL)",
        name="staff_practitioner_complete",
    ),
    CheckConstraint(
        "(create_request_id IS NULL) = (create_request_fingerprint IS NULL)",
        name="staff_request_fingerprinted",
    ),
)
Index(
    "staff_display_prefix", staff.c.display_key, postgresql_ops={"display_key": "text_pattern_ops"}
)
Index("staff_roles", staff.c.roles, postgresql_using="gin")

memberships = Table(
    "memberships",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("staff_id", UUID(as_uuid=True), ForeignKey("staff.id"), nullable=False),
    Column("department_id", UUID(as_uuid=True), ForeignKey("departments.id"), nullable=False),
    Column("period_start", DateTime(timezone=True), nullable=False),
    # NULL: until removed. Equal to the start: removed before it began (an empty period).
    Column("period_end", DateTime(timezone=True)),
    Column("is_primary", Boolean, nullable=False, server_default=text("false")),
    Column("create_request_id", Text, unique=True),
    Column("create_request_fingerprint", Text),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Only an approved membership is in force (tokens, `current_only`); see access_changes.
    Column("approval_state", Text, nullable=False, server_default="approved"),
    # The access change that decides it (access_changes.membership_id names it back); NULL for
    # memberships made before the two-person rule.
    Column("access_change_id", UUID(as_uuid=True)),
    CheckConstraint(
        "period_end IS NULL OR period_end >= period_start", name="membership_period_ordered"
    ),
    CheckConstraint(
        f"approval_state IN ({_quoted(APPROVAL_STATES)})", name="membership_approval_known"
    ),
    CheckConstraint(
        "(create_request_id IS NULL) = (create_request_fingerprint IS NULL)",
        name="membership_request_fingerprinted",
    ),
)
Index(
    "memberships_by_staff",
    memberships.c.staff_id,
    memberships.c.period_start.desc(),
    memberships.c.id.desc(),
)
Index(
    "memberships_by_department",
    memberships.c.department_id,
    memberships.c.period_start.desc(),
    memberships.c.id.desc(),
)
Index("memberships_list_order", memberships.c.period_start.desc(), memberships.c.id.desc())

# The two-person rule: roles to add to a staff member, or a membership, proposed by one
# administrator and in force only once a second one approves. The checks hold the rule even
# against a servicer bug: nobody proposes or decides a change of their own access, and an
# approval is by someone other than the proposer. Proposer and decider are token subjects (an
# external identity provider's staff ids too), so no foreign key.
access_changes = Table(
    "access_changes",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("staff_id", UUID(as_uuid=True), ForeignKey("staff.id"), nullable=False),
    Column("kind", Text, nullable=False),
    Column("roles", ARRAY(Text)),
    Column("membership_id", UUID(as_uuid=True), ForeignKey("memberships.id")),
    Column("state", Text, nullable=False),
    Column("proposer_id", UUID(as_uuid=True), nullable=False),
    Column("decider_id", UUID(as_uuid=True)),
    # How it was decided: by a second administrator, in the setup window (services/his/iam/
    # approvals.py: the first second administrator), or by the demo loader (his.iam.demo_seed).
    Column("rule", Text, nullable=False, server_default="two_person"),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("decide_time", DateTime(timezone=True)),
    CheckConstraint("kind IN ('roles', 'membership')", name="access_change_kind_known"),
    CheckConstraint(f"rule IN ({_quoted(APPROVAL_RULES)})", name="access_change_rule_known"),
    CheckConstraint(f"state IN ({_quoted(APPROVAL_STATES)})", name="access_change_state_known"),
    CheckConstraint(
        f"(kind = 'roles') = (roles IS NOT NULL AND cardinality(roles) >= 1 "
        f"AND roles <@ ARRAY[{_quoted(STAFF_ROLES)}]::text[])",
        name="access_change_roles_known",
    ),
    CheckConstraint(
        "(kind = 'membership') = (membership_id IS NOT NULL)",
        name="access_change_membership_named",
    ),
    CheckConstraint("proposer_id <> staff_id", name="access_change_not_own_proposal"),
    CheckConstraint(
        "decider_id IS NULL OR decider_id <> staff_id", name="access_change_not_own_decision"
    ),
    CheckConstraint(
        "state <> 'approved' OR decider_id <> proposer_id "
        "OR (decider_id IS NULL AND rule <> 'two_person')",
        name="access_change_second_person",
    ),
    CheckConstraint(
        "(state = 'pending') = (decide_time IS NULL)", name="access_change_decided_when"
    ),
    CheckConstraint(
        "state = 'pending' OR decider_id IS NOT NULL OR rule <> 'two_person'",
        name="access_change_decider_named",
    ),
    UniqueConstraint("membership_id", name="access_change_membership_unique"),
)
Index("access_changes_list_order", access_changes.c.create_time.desc(), access_changes.c.id.desc())
Index(
    "access_changes_by_staff",
    access_changes.c.staff_id,
    access_changes.c.create_time.desc(),
    access_changes.c.id.desc(),
)

# Two memberships of one staff member in the same department, or two primary ones, never overlap
# in time: enforced by the trigger `memberships_no_overlap` (migration 0001), which raises an
# exclusion violation naming one of these constraints. An exclusion constraint would need
# btree_gist, which embedded PostgreSQL lacks (the same choice as scheduling's appointments).
DEPARTMENT_OVERLAP = "memberships_department_no_overlap"
PRIMARY_OVERLAP = "memberships_primary_no_overlap"

emergency_access_grants = Table(
    "emergency_access_grants",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("staff_id", UUID(as_uuid=True), ForeignKey("staff.id"), nullable=False),
    # A patient of the patient service (another schema: a reference by id, no foreign key).
    Column("patient_id", UUID(as_uuid=True), nullable=False),
    Column("reason", Text, nullable=False),
    Column("grant_time", DateTime(timezone=True), nullable=False),
    Column("expire_time", DateTime(timezone=True), nullable=False),
    Column("revoke_time", DateTime(timezone=True)),
    # Request ids are per staff member: the caller is part of what a request means.
    Column("create_request_id", Text),
    Column("create_request_fingerprint", Text),
    # Set once the grant is over and known to be: on revocation, or when the next grant of the
    # same person and patient finds it expired. "At most one open grant per person and patient"
    # is then a partial unique index (grants_one_open): an expiry cannot be indexed (it depends
    # on now()) and an exclusion constraint over time ranges would need btree_gist.
    Column("closed_time", DateTime(timezone=True)),
    # The privacy officer's review: 'pending' until ReviewEmergencyAccessGrant.
    Column("review_state", Text, nullable=False, server_default="pending"),
    Column("reviewer_id", UUID(as_uuid=True), ForeignKey("staff.id", name="grant_reviewer_staff")),
    Column("review_time", DateTime(timezone=True)),
    Column("review_comment", Text),
    CheckConstraint("expire_time > grant_time", name="grant_period_ordered"),
    CheckConstraint(
        "revoke_time IS NULL OR revoke_time >= grant_time", name="grant_revoked_after_grant"
    ),
    CheckConstraint("char_length(reason) BETWEEN 20 AND 1000", name="grant_reason_length"),
    CheckConstraint(
        "(create_request_id IS NULL) = (create_request_fingerprint IS NULL)",
        name="grant_request_fingerprinted",
    ),
    UniqueConstraint("staff_id", "create_request_id", name="grant_request_unique"),
    CheckConstraint(
        "review_state IN ('pending', 'justified', 'flagged')", name="grant_review_state_known"
    ),
    CheckConstraint(
        "(review_state = 'pending') = (reviewer_id IS NULL) "
        "AND (reviewer_id IS NULL) = (review_time IS NULL)",
        name="grant_reviewed_by_someone",
    ),
    CheckConstraint(
        "review_comment IS NULL OR char_length(review_comment) <= 1000",
        name="grant_review_comment_length",
    ),
    CheckConstraint(
        "closed_time IS NULL OR closed_time >= grant_time", name="grant_closed_after_grant"
    ),
)
# The name store.insert_grant recognises when a second open grant is refused.
ONE_OPEN_GRANT = "grants_one_open"
Index(
    ONE_OPEN_GRANT,
    emergency_access_grants.c.staff_id,
    emergency_access_grants.c.patient_id,
    unique=True,
    postgresql_where=text("closed_time IS NULL"),
)
Index(
    "grants_review_queue",
    emergency_access_grants.c.review_state,
    emergency_access_grants.c.grant_time.desc(),
    emergency_access_grants.c.id.desc(),
)
Index(
    "grants_list_order",
    emergency_access_grants.c.grant_time.desc(),
    emergency_access_grants.c.id.desc(),
)
Index(
    "grants_by_staff_patient",
    emergency_access_grants.c.staff_id,
    emergency_access_grants.c.patient_id,
    emergency_access_grants.c.expire_time,
)
Index(
    "grants_by_patient", emergency_access_grants.c.patient_id, emergency_access_grants.c.grant_time
)

# One StartPatientSignIn: a code sent (or, for a number no active patient has, a decoy that can
# never complete: the answer must not tell the two apart). Neither the code nor the phone number
# is stored in clear: both are keyed hashes (HMAC-SHA256, his.iam.sign_in).
patient_sign_ins = Table(
    "patient_sign_ins",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("phone_key", LargeBinary, nullable=False),
    # The patient the code was sent to (the patient service's id, no foreign key); NULL: a decoy.
    Column("patient_id", UUID(as_uuid=True)),
    # HMAC(key, sign-in id || code): a code is bound to its sign-in.
    Column("code_hash", LargeBinary, nullable=False),
    Column("source", Text, nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("expire_time", DateTime(timezone=True), nullable=False),
    # Wrong codes given for this sign-in.
    # Set once, by the one completion that got the token: single use.
    Column("used_time", DateTime(timezone=True)),
    # Retired by a newer sign-in of the same number, or voided by the wrong-code limit.
    Column("void_time", DateTime(timezone=True)),
    CheckConstraint("expire_time > create_time", name="sign_in_period_ordered"),
    CheckConstraint("octet_length(code_hash) = 32", name="sign_in_code_hash_sha256"),
    CheckConstraint("octet_length(phone_key) = 32", name="sign_in_phone_key_sha256"),
    CheckConstraint("patient_id IS NOT NULL OR used_time IS NULL", name="sign_in_decoy_unused"),
)
Index(
    "sign_ins_open_by_phone",
    patient_sign_ins.c.phone_key,
    postgresql_where=text("used_time IS NULL AND void_time IS NULL"),
)
Index("sign_ins_by_expiry", patient_sign_ins.c.expire_time)

SIGN_IN_ATTEMPT_KINDS = ("start", "failure")

# What the sign-in rate limits count over their window: each start and each wrong code, with the
# number (keyed hash) and the source. Rows older than the window are deleted as starts come.
sign_in_attempts = Table(
    "sign_in_attempts",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("kind", Text, nullable=False),
    Column("phone_key", LargeBinary, nullable=False),
    Column("source", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    CheckConstraint(f"kind IN ({_quoted(SIGN_IN_ATTEMPT_KINDS)})", name="sign_in_attempt_kind"),
)
Index(
    "sign_in_attempts_by_phone",
    sign_in_attempts.c.kind,
    sign_in_attempts.c.phone_key,
    sign_in_attempts.c.at,
)
Index(
    "sign_in_attempts_by_source",
    sign_in_attempts.c.kind,
    sign_in_attempts.c.source,
    sign_in_attempts.c.at,
)
Index("sign_in_attempts_by_time", sign_in_attempts.c.at)

# What an enrolment's approval must satisfy (migration 0007 creates the same checks).
ENROLMENT_CHECKS = {
    "enrolment_approval_whole": "(approved_by IS NULL) = (approve_time IS NULL) "
    "AND (approve_time IS NULL) = (approval_code_hash IS NULL)",
    "enrolment_approval_hash_sha256": "approval_code_hash IS NULL "
    "OR octet_length(approval_code_hash) = 32",
    "enrolment_approved_only_if_required": "approval_required OR approved_by IS NULL",
    "enrolment_used_once_approved": "NOT approval_required OR used_time IS NULL "
    "OR (approve_time IS NOT NULL AND approve_time <= used_time)",
    "enrolment_approver_not_creator": "approved_by IS NULL OR approved_by <> created_by",
    "enrolment_approver_not_enrolled": "approved_by IS NULL "
    "OR approved_by <> 'staff/' || staff_id::text",
    "enrolment_not_by_self": "created_by <> 'staff/' || staff_id::text",
    # Migration 0009's.
    "enrolment_assurance_known": "assurance IN ('TWO_ADMINISTRATORS', 'LONE_ADMINISTRATOR', "
    "'ONE_ADMINISTRATOR', 'UNCHECKED')",
    "enrolment_assurance_two_iff_required": "approval_required = "
    "(assurance = 'TWO_ADMINISTRATORS')",
}
# What a credential's assurance must satisfy (migration 0009 creates the same check).
CREDENTIAL_CHECKS = {
    "credential_assurance_known": "assurance IN ('TWO_ADMINISTRATORS', 'LONE_ADMINISTRATOR', "
    "'ONE_ADMINISTRATOR', 'UNCHECKED', 'DIRECT')",
}

# A staff member's own credential, set only through a one-time enrolment (his.iam.credentials):
# the password as an argon2id hash and the TOTP secret encrypted (AES-GCM, bound to the staff id).
staff_credentials = Table(
    "staff_credentials",
    metadata,
    Column("staff_id", UUID(as_uuid=True), ForeignKey("iam.staff.id"), primary_key=True),
    Column("password_hash", Text, nullable=False),
    Column("totp_secret_enc", LargeBinary, nullable=False),
    Column("enrol_time", DateTime(timezone=True), nullable=False),
    # The enrolment that set it; None when set directly (the development bootstrap
    # administrator). Triggers (migrations 0007, 0008) let an existing credential be replaced only
    # through an open enrolment approved by a second administrator, and never deleted.
    Column(
        "enrolment_id",
        UUID(as_uuid=True),
        ForeignKey("iam.staff_enrolments.id", name="credential_enrolment", ondelete="SET NULL"),
    ),
    # How many administrators stood behind it (his.iam.enrolment_rule; migration 0009): a
    # ONE_ADMINISTRATOR credential never signs in while its person holds a TOTP role.
    Column("assurance", Text, nullable=False),
    CheckConstraint("password_hash LIKE '$argon2id$%'", name="staff_credential_argon2id"),
    *(CheckConstraint(condition, name=name) for name, condition in CREDENTIAL_CHECKS.items()),
)

# One-time enrolment codes an administrator hands a staff member: stored as keyed hashes
# (HMAC-SHA256 bound to the enrolment id); used once, retired by a newer one, expiring. One that
# needs a second administrator (his.iam.enrolment_rule) has two halves: the creator's
# (`code_hash`) and the approver's (`approval_code_hash`, set by the approval).
staff_enrolments = Table(
    "staff_enrolments",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("staff_id", UUID(as_uuid=True), ForeignKey("iam.staff.id"), nullable=False),
    Column("code_hash", LargeBinary, nullable=False),
    # Who created it (`staff/{id}`), for an incident's questions.
    Column("created_by", Text, nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("expire_time", DateTime(timezone=True), nullable=False),
    Column("used_time", DateTime(timezone=True)),
    Column("void_time", DateTime(timezone=True)),
    Column("approval_required", Boolean, nullable=False, server_default=false()),
    # Who approved it (`staff/{id}`), when, and the keyed hash of the second half.
    Column("approved_by", Text),
    Column("approve_time", DateTime(timezone=True)),
    Column("approval_code_hash", LargeBinary),
    # How many administrators stand behind it (his.iam.enrolment_rule; migration 0009).
    Column("assurance", Text, nullable=False),
    CheckConstraint("expire_time > create_time", name="enrolment_period_ordered"),
    CheckConstraint("octet_length(code_hash) = 32", name="enrolment_code_hash_sha256"),
    *(CheckConstraint(condition, name=name) for name, condition in ENROLMENT_CHECKS.items()),
)
Index(
    "enrolments_open_by_staff",
    staff_enrolments.c.staff_id,
    postgresql_where=text("used_time IS NULL AND void_time IS NULL"),
)

# Failed staff logins and enrolments over the lockout window: the username as a keyed hash (an
# unknown name is counted too) and the source. Rows older than the window are deleted as they come.
staff_login_failures = Table(
    "staff_login_failures",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("user_key", LargeBinary, nullable=False),
    Column("source", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    CheckConstraint("octet_length(user_key) = 32", name="login_failure_user_key_sha256"),
)
Index("login_failures_by_user", staff_login_failures.c.user_key, staff_login_failures.c.at)
Index("login_failures_by_source", staff_login_failures.c.source, staff_login_failures.c.at)
Index("login_failures_by_time", staff_login_failures.c.at)

# Events for other services (audit among them), stored with the change (his.runtime.outbox).
outbox = declare_outbox(metadata)
