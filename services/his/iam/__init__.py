"""The iam service: departments, staff, memberships, the local identity provider and
break-the-glass grants (his.iam.v1.IamService)."""
