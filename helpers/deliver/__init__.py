"""`make deliver`, the checklist's last step: one signed commit in DELIVERY_REPO.

commit  the step: refusals before the repo is touched, the commit, its record (deliver.json)
code    where the model's code from changes.json goes in vllm-ascend; the vLLM patch exported
docs    the docs system (mkdocs / sphinx), the tutorial's nav entry, the nightly accuracy list
issue   the issue comment, posted with `gh` when ISSUE_URL is set and gh is logged in
"""

from helpers.deliver.commit import commit, post_issue_comment, prepare
from helpers.deliver.docs import add_nav_entry, detect_docs_system

__all__ = ["add_nav_entry", "commit", "detect_docs_system", "post_issue_comment", "prepare"]
